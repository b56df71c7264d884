// Process backends of your own, written with the worker SDK
// (<joblib/worker_sdk.hpp>). Built and run as the ctest
// `docs.process_backend`; docs/plugins.md quotes it.
//
//   - `one_per_batch` uses the low-level pieces: every batch gets a worker
//     process of its own (this program started again), the batch travels
//     as a request frame and comes back as a reply, and the SDK turns the
//     reply into results or the task's exception.
//   - `tagged_pool` uses the pool: PoolBackend does submit, abort and
//     stop_call; the subclass only chooses its pool (here, a pool per call
//     whose workers have a variable of their own in their environment).
#include <joblib/joblib.hpp>
#include <joblib/worker_sdk.hpp>

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace sdk = joblib::worker_sdk;

namespace {

int failures = 0;
void expect(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

// ---- one worker process per batch ------------------------------------------------

// What the call's batches share: the memmap folder and the workers running
// now (so that abort() can stop them).
struct CallState {
  std::unique_ptr<sdk::CallMemmap> memmap;
  std::mutex m;
  std::set<pid_t> running;
};

// Runs one batch in a fresh worker and completes it; never throws.
void run_in_own_worker(joblib::Batch& batch, std::shared_ptr<CallState> call) {
  try {
    sdk::Request request = sdk::encode_request_parts(batch, call->memmap.get());  // large buffers not copied
    sdk::WorkerProcess worker = sdk::WorkerProcess::start({.start = sdk::StartMethod::spawn});
    {
      std::lock_guard lock(call->m);
      call->running.insert(worker.pid());
    }
    batch.set_location("worker process " + std::to_string(worker.pid()));  // named by a TimeoutError
    batch.started();  // the timeout clock of its tasks starts
    worker.send_request(sdk::FrameKind::run, request);
    sdk::Received reply = worker.receive();
    const pid_t pid = worker.pid();
    {
      std::lock_guard lock(call->m);
      call->running.erase(pid);
    }
    if (reply.frame && reply.frame->kind == sdk::FrameKind::reply) {
      worker.stop();
      sdk::complete_batch(batch, reply.frame->payload);  // results, or the task's own exception
    } else {
      const int status = worker.wait();  // it died: reap it and say how
      worker.close();
      batch.fail(sdk::worker_terminated(status, pid, batch.size()));
    }
  } catch (...) {
    batch.fail(std::current_exception());  // it could not be encoded, or no worker started
  }
}

class OnePerBatchBackend final : public joblib::ParallelBackendBase {
 public:
  using ParallelBackendBase::ParallelBackendBase;
  std::string name() const override { return "one_per_batch"; }
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.needs_encoded_tasks = true;  // tasks travel: the dispatcher checks they can
    return c;
  }
  std::exception_ptr start_call(const joblib::CallSettings& settings) noexcept override {
    try {
      call_ = std::make_shared<CallState>();
      call_->memmap = std::make_unique<sdk::CallMemmap>(settings);
    } catch (...) {
      return std::current_exception();
    }
    return nullptr;
  }
  void submit(joblib::Batch& batch) noexcept override {
    try {
      std::thread(run_in_own_worker, std::ref(batch), call_).detach();
    } catch (...) {
      batch.fail(std::current_exception());
    }
  }
  void abort() noexcept override {
    std::lock_guard lock(call_->m);
    for (pid_t pid : call_->running) ::kill(pid, SIGKILL);
  }
  void stop_call() noexcept override {
    if (call_) call_->memmap->cleanup();
  }

 private:
  std::shared_ptr<CallState> call_;
};

// ---- a pool with a policy of its own ---------------------------------------------

class TaggedPoolBackend final : public sdk::PoolBackend {
 public:
  using PoolBackend::PoolBackend;
  std::string name() const override { return "tagged_pool"; }

 protected:
  std::shared_ptr<sdk::WorkerPool> make_pool(const joblib::CallSettings& settings) override {
    sdk::WorkerOptions options{.start = sdk::StartMethod::spawn,
                               .env = {{"MY_POOL_TAG", "blue"}},
                               .initializer = settings.initializer};
    return std::make_shared<sdk::WorkerPool>(options, settings.n_jobs);  // ends with the call
  }
};

// ---- tasks ----------------------------------------------------------------------------

int pid_of(int) { return static_cast<int>(::getpid()); }
std::string tag_of(int) {
  const char* t = std::getenv("MY_POOL_TAG");
  return t ? t : "";
}
int checked_half(int i) {
  if (i % 2) throw std::invalid_argument("odd input " + std::to_string(i));
  return i / 2;
}

}  // namespace

int main() {
  joblib::register_parallel_backend("one_per_batch", [](const joblib::BackendInit& init) {
    return std::make_unique<OnePerBatchBackend>(init);
  });
  joblib::register_parallel_backend("tagged_pool", [](const joblib::BackendInit& init) {
    return std::make_unique<TaggedPoolBackend>(init);
  });

  // Each batch ran in a process of its own, none of them this one.
  std::vector<int> pids =
      joblib::Parallel({.n_jobs = 2, .backend = "one_per_batch", .batch_size = 1}).map(pid_of, std::views::iota(0, 4));
  const std::set<int> distinct(pids.begin(), pids.end());
  expect(distinct.size() == 4 && !distinct.count(::getpid()), "one worker process per batch");

  // A task's exception comes back with its type and message.
  try {
    joblib::Parallel({.n_jobs = 2, .backend = "one_per_batch"}).map(checked_half, std::vector{0, 2, 3});
    expect(false, "the task's exception reaches the caller");
  } catch (const std::invalid_argument& e) {
    expect(std::string(e.what()).find("odd input 3") != std::string::npos, "the task's own message");
  }

  // The pool's workers have the environment its policy gave them.
  std::vector<std::string> tags =
      joblib::Parallel({.n_jobs = 2, .backend = "tagged_pool"}).map(tag_of, std::views::iota(0, 6));
  expect(tags == std::vector<std::string>(6, "blue"), "the pool's workers carry its tag");
  std::vector<int> halves = joblib::Parallel({.n_jobs = 2, .backend = "tagged_pool"}).map(
      [](int i) { return i / 2; }, std::views::iota(0, 6));
  expect(halves == (std::vector<int>{0, 0, 1, 1, 2, 2}), "results in input order");

  // No worker is left: a per-call pool stopped its workers with its call.
  expect(sdk::pool_worker_pids().empty(), "no worker outlives its call");
  std::printf("%s\n", failures ? "process backends: FAILED" : "process backends: ok");
  return failures ? 1 : 0;
}
