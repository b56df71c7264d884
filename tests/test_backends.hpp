#pragma once
// Backends registered in-process by the tests, to observe resolution and
// dispatch without depending on a real engine.
#include <joblib/backend.hpp>
#include <joblib/config.hpp>

#include <atomic>
#include <string>
#include <thread>

namespace joblib_test {

/// Runs every batch on a detached thread; claims the capabilities it is given.
class FakeBackend final : public joblib::ParallelBackendBase {
 public:
  FakeBackend(const joblib::BackendInit& init, std::string name, bool threads, bool sharedmem)
      : ParallelBackendBase(init), name_(std::move(name)), threads_(threads), sharedmem_(sharedmem) {}
  std::string name() const override { return name_; }
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.uses_threads = threads_;
    c.supports_sharedmem = sharedmem_;
    return c;
  }
  void submit(joblib::Batch& b) noexcept override {
    std::thread([&b] { b.run(); }).detach();
  }

 private:
  std::string name_;
  bool threads_, sharedmem_;
};

/// Registers "fake_threads" (threads + sharedmem) and "fake_processes" (neither), once.
inline void register_fake_backends() {
  static bool done = [] {
    joblib::register_parallel_backend("fake_threads", [](const joblib::BackendInit& i) {
      return std::make_unique<FakeBackend>(i, "fake_threads", true, true);
    });
    joblib::register_parallel_backend("fake_processes", [](const joblib::BackendInit& i) {
      return std::make_unique<FakeBackend>(i, "fake_processes", false, false);
    });
    return true;
  }();
  (void)done;
}

}  // namespace joblib_test
