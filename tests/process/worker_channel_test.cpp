// The channel between the caller and its worker processes: a worker's death
// is seen at once, whatever its children hold; a task cannot take the
// channel over by accident; idle workers leaving are not crashes; only a
// worker this library spawned takes over a program; a process call made
// inside a process task works; and a request flattened into one block (the
// mpi plugin's way) carries its large buffers intact.
#include <joblib/joblib.hpp>
#include <joblib/worker_sdk.hpp>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <condition_variable>
#include <deque>
#include <set>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <ranges>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {
namespace fs = std::filesystem;
using joblib::delayed;
using joblib::Parallel;
using ::testing::HasSubstr;

int square(int x) { return x * x; }

// A process call made by a task running in a worker process.
int inner_sum(std::string backend) {
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = backend}).map(square, std::views::iota(0, 4));
  return r[0] + r[1] + r[2] + r[3];
}

class NestedProcessCalls : public ::testing::TestWithParam<std::pair<const char*, const char*>> {};

TEST_P(NestedProcessCalls, AProcessCallInsideAProcessTaskRuns) {
  const auto [outer, inner] = GetParam();
#if defined(__SANITIZE_ADDRESS__)
  if (std::string(outer) == "multiprocessing")
    GTEST_SKIP() << "ASan's allocator (GCC 12) is not fork-safe: a forked worker that starts threads can deadlock in it";
#endif
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = outer, .batch_size = 1})(
      std::views::iota(0, 3) | std::views::transform([&](int) { return delayed(inner_sum)(std::string(inner)); }));
  EXPECT_EQ(r, (std::vector{14, 14, 14}));
}

INSTANTIATE_TEST_SUITE_P(Backends, NestedProcessCalls,
                         ::testing::Values(std::pair{"multiprocessing", "loky"},
                                           std::pair{"multiprocessing", "multiprocessing"},
                                           std::pair{"loky", "loky"}, std::pair{"loky", "multiprocessing"}));

// Starts a child that inherits everything (no exec) and waits forever, then
// dies: its worker is dead while the child still holds the worker's socket.
int die_leaving_a_child(std::string pid_file) {
  const pid_t child = ::fork();
  if (child == 0) {
    for (;;) ::pause();
  }
  std::ofstream(pid_file) << child;
  std::abort();
}

// The same with a program started by exec (it would inherit a descriptor
// without close-on-exec).
int die_leaving_a_program(std::string pid_file) {
  const std::string cmd = "sleep 600 & echo $! > " + pid_file;
  if (std::system(cmd.c_str()) != 0) return -1;
  std::abort();
}

void kill_pid_in(const fs::path& file) {
  std::ifstream in(file);
  long pid = 0;
  if (in >> pid && pid > 0) ::kill(static_cast<pid_t>(pid), SIGKILL);
  fs::remove(file);
}

class ChannelBackends : public ::testing::TestWithParam<const char*> {};

TEST_P(ChannelBackends, AWorkersDeathIsSeenWhileItsChildLives) {
  for (auto task : {die_leaving_a_child, die_leaving_a_program}) {
    const fs::path pid_file = fs::temp_directory_path() / ("joblib_grandchild_" + std::to_string(::getpid()));
    try {
      Parallel({.n_jobs = 2, .backend = GetParam()})(std::views::iota(0, 1) | std::views::transform([&](int) {
                                                       return delayed(task)(pid_file.string());
                                                     }))
          .to_vector();
      ADD_FAILURE() << "no error";
    } catch (const joblib::TerminatedWorkerError& e) {
      EXPECT_THAT(e.what(), HasSubstr("SIGABRT(-6)"));
    }
    kill_pid_in(pid_file);
  }
  // And the backend still works.
  EXPECT_EQ(Parallel({.n_jobs = 2, .backend = GetParam()}).map(square, std::vector{3}).to_vector(), std::vector{9});
}

// Writes garbage to every socket this process has: the worker's channel
// among them, wherever it is.
int write_to_every_socket(int) {
  std::vector<int> fds;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) fds.push_back(std::stoi(e.path().filename().string()));
  for (int fd : fds) {
    struct stat st {};
    if (::fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) (void)!::write(fd, "garbage!garbage!garbage!", 24);
  }
  return 0;
}

// Writes to descriptor 3, where a worker's channel used to be.
int write_to_fd_3(int) {
  (void)!::write(3, "garbage!garbage!garbage!", 24);
  return 7;
}

TEST_P(ChannelBackends, ATaskWritingToTheChannelFailsTheCallClearly) {
  try {
    Parallel({.n_jobs = 2, .backend = GetParam()}).map(write_to_every_socket, std::vector{0}).to_vector();
    ADD_FAILURE() << "no error";
  } catch (const joblib::TerminatedWorkerError& e) {
    EXPECT_THAT(e.what(), HasSubstr("instead of a reply"));
  }
  // The channel is not on a descriptor a task would guess.
  EXPECT_EQ(Parallel({.n_jobs = 2, .backend = GetParam()}).map(write_to_fd_3, std::vector{0, 1}).to_vector(),
            (std::vector{7, 7}));
}

INSTANTIATE_TEST_SUITE_P(Backends, ChannelBackends, ::testing::Values("loky", "multiprocessing"));

TEST(LokyIdleTest, WorkersLeavingIdleAreNeverCrashes) {
  joblib::parallel_config scope({.backend = "loky", .settings = {{"idle_worker_timeout", "0.0001"}}});
  for (int call = 0; call < 20; ++call) {
    std::vector<int> r = Parallel({.n_jobs = 2, .backend = "loky", .batch_size = 1}).map(square, std::views::iota(0, 6));
    EXPECT_EQ(r, (std::vector{0, 1, 4, 9, 16, 25})) << "call " << call;
  }
}

TEST(LokyIdleTest, AnIdleTimeoutThatIsNotAFiniteDurationIsRejected) {
  for (const char* bad : {"nan", "inf", "-inf", "1e300", "-1", "", "abc"}) {
    joblib::parallel_config scope({.backend = "loky", .settings = {{"idle_worker_timeout", bad}}});
    try {
      Parallel({.n_jobs = 2, .backend = "loky"}).map(square, std::vector{1}).to_vector();
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const std::invalid_argument& e) {
      EXPECT_THAT(e.what(), HasSubstr("idle_worker_timeout must be a finite number of seconds")) << bad;
    }
  }
}

// A program linked with joblib, run with a worker's environment by someone
// else, runs its own main (it prints "OK 2 4 6" and exits 0).
std::string run_with_env(const std::string& env) {
  const std::string cmd = "timeout 60 env " + env + " " + JOBLIB_TEST_GUARD_CHILD + " < /dev/null 2>&1";
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int status = ::pclose(p);
  return out + "|status=" + std::to_string(status);
}

TEST(WorkerGuardTest, OnlyAWorkerThisLibrarySpawnedTakesOver) {
  for (const char* env : {"JOBLIB_WORKER_FD=abc", "JOBLIB_WORKER_FD=1", "JOBLIB_WORKER_FD=0", "JOBLIB_WORKER_FD=3",
                          "JOBLIB_WORKER_FD=2 JOBLIB_WORKER_PARENT=1 JOBLIB_WORKER_TOKEN=0123456789abcdef0123456789abcdef"}) {
    const std::string out = run_with_env(env);
    EXPECT_THAT(out, HasSubstr("OK 2 4 6")) << env;
    EXPECT_THAT(out, HasSubstr("joblib: ignoring JOBLIB_WORKER_FD")) << env;
    EXPECT_THAT(out, HasSubstr("|status=0")) << env;
  }
}

}  // namespace

// ---- a request in one block, relayed (as the mpi plugin's ranks do) -------------

namespace relay {
namespace sdk = joblib::worker_sdk;

// A backend whose tasks travel encoded, as to a worker process.
class EncodingBackend : public joblib::ParallelBackendBase {
 public:
  using ParallelBackendBase::ParallelBackendBase;
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.needs_encoded_tasks = true;
    return c;
  }
};

// Relays each batch through serve_request in this process: the request
// flattened into one vector behind 8 bytes of the backend's own (so it
// starts unaligned), served without a frame block, so the worker side
// copies its in-frame buffers out.
class RelayBackend final : public EncodingBackend {
 public:
  using EncodingBackend::EncodingBackend;
  ~RelayBackend() override { join(); }
  std::string name() const override { return "relay"; }
  void submit(joblib::Batch& b) noexcept override {
    std::lock_guard lock(m_);
    threads_.emplace_back([&b] {
      std::vector<std::byte> request;
      try {
        request = sdk::encode_request(b, nullptr, 8);
      } catch (...) {
        b.fail(std::current_exception());
        return;
      }
      std::vector<std::byte> reply;
      b.started();
      sdk::serve_request(std::span<const std::byte>(request).subspan(8),
                         [&](std::span<const std::byte> head, std::span<const std::byte> body) {
                           reply.assign(head.begin(), head.end());
                           reply.insert(reply.end(), body.begin(), body.end());
                         });
      sdk::complete_batch(b, reply);
    });
  }
  void stop_call() noexcept override { join(); }

 private:
  void join() noexcept {
    std::vector<std::thread> ts;
    {
      std::lock_guard lock(m_);
      ts.swap(threads_);
    }
    for (std::thread& t : ts) t.join();
  }
  std::mutex m_;
  std::vector<std::thread> threads_;
};

double sum_of(joblib::Array<double> a, std::vector<float> v, int i) {
  double s = i;
  for (double x : std::as_const(a)) s += x;
  for (float x : v) s += x;
  a[0] = -1;  // stays in this task's copy
  return s;
}

// Runs `body` in a child with `Backend` registered as `name` (serve_request
// turns on the worker's throw traces for its whole process); the child's
// exit status says whether `body` held.
template <class Backend, class F>
void in_child(const char* name, F body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    joblib::register_parallel_backend(name, [](const joblib::BackendInit& i) { return std::make_unique<Backend>(i); });
    const bool ok = body();
    std::fflush(nullptr);
    ::_exit(ok ? 0 : 1);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

}  // namespace relay

TEST(RelayedRequestTest, AFlattenedRequestCarriesItsLargeBuffersIntact) {
  relay::in_child<relay::RelayBackend>("relay", [] {
    joblib::Array<double> a({100'001});
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = double(i % 100);
    std::vector<float> v(30'001, 0.5f);
    double expected = 0;
    for (double x : std::as_const(a)) expected += x;
    for (float x : v) expected += x;
    std::vector<double> got = Parallel({.n_jobs = 2, .backend = "relay", .batch_size = 3})(
        std::views::iota(0, 9) | std::views::transform([&](int i) { return delayed(relay::sum_of)(a, v, i); }));
    bool ok = got.size() == 9 && a[0] == 0.0;
    for (int i = 0; ok && i < 9; ++i) ok = got[std::size_t(i)] == expected + i;
    return ok;
  });
}

namespace kept {
namespace sdk = joblib::worker_sdk;

// One worker (a thread) that keeps large buffers for the call, as a worker
// on another host does: each batch is encoded with the worker's SentBuffers
// and served with its KeptBuffers; the size of each request is recorded.
// With `forget`, the worker drops what it kept before each request (so it
// is named a buffer it does not hold).
std::vector<std::size_t> request_sizes;
bool forget = false;

class KeepingBackend final : public relay::EncodingBackend {
 public:
  using EncodingBackend::EncodingBackend;
  ~KeepingBackend() override { stop_call(); }
  std::string name() const override { return "keeping"; }
  std::exception_ptr start_call(const joblib::CallSettings& s) noexcept override {
    memmap_ = std::make_unique<sdk::CallMemmap>(s);
    worker_ = std::thread([this] { serve(); });
    return {};
  }
  void submit(joblib::Batch& b) noexcept override {
    {
      std::lock_guard lock(m_);
      queue_.push_back(&b);
    }
    cv_.notify_all();
  }
  void stop_call() noexcept override {
    {
      std::lock_guard lock(m_);
      done_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    kept_.clear();  // the call ended: its buffers go
    sent_.clear();
  }

 private:
  void serve() {
    for (;;) {
      joblib::Batch* b = nullptr;
      {
        std::unique_lock lock(m_);
        cv_.wait(lock, [this] { return done_ || !queue_.empty(); });
        if (queue_.empty()) return;
        b = queue_.front();
        queue_.pop_front();
      }
      sdk::Request request;
      try {
        request = sdk::encode_request_parts(*b, memmap_.get(), 0, &sent_);
      } catch (...) {
        b->fail(std::current_exception());
        continue;
      }
      const std::vector<std::byte> flat = request.flatten();
      request_sizes.push_back(flat.size());
      if (forget) kept_.clear();
      std::vector<std::byte> reply;
      b->started();
      sdk::serve_request(
          flat,
          [&](std::span<const std::byte> head, std::span<const std::byte> body) {
            reply.assign(head.begin(), head.end());
            reply.insert(reply.end(), body.begin(), body.end());
          },
          nullptr, nullptr, &kept_);
      sdk::complete_batch(*b, reply);
    }
  }
  std::unique_ptr<sdk::CallMemmap> memmap_;
  sdk::SentBuffers sent_;
  sdk::KeptBuffers kept_;
  std::thread worker_;
  std::mutex m_;
  std::condition_variable cv_;
  std::deque<joblib::Batch*> queue_;
  bool done_ = false;
};

// The array's file, and whether the task saw it as sent with the right sum.
std::string file_and_check(joblib::Array<double> a, double expected) {
  double s = 0;
  for (double x : std::as_const(a)) s += x;
  const bool fresh = std::as_const(a)[0] == 0.0;
  a[0] = -1;  // private to this task (mmap_mode r)
  return a.filename().string() + (fresh && s == expected ? "|ok" : "|bad");
}

}  // namespace kept

TEST(KeptBuffersTest, ALargeBufferTravelsOncePerWorkerPerCallAndItsTasksMapOneFilePrivately) {
  relay::in_child<kept::KeepingBackend>("keeping", [] {
    joblib::Array<double> a({100'001});  // 800 KB: over max_nbytes
    double expected = 0;
    for (std::size_t i = 0; i < a.size(); ++i) expected += (a[i] = double(i % 10));
    std::vector<std::string> got = Parallel({.n_jobs = 2, .backend = "keeping", .batch_size = 3, .max_nbytes = "100K"})(
        std::views::iota(0, 9) | std::views::transform([&](int) { return delayed(kept::file_and_check)(a, expected); }));
    std::set<std::string> files(got.begin(), got.end());
    bool ok = files.size() == 1 && files.begin()->ends_with("|ok") && files.begin()->size() > 3;
    if (!ok) std::fprintf(stderr, "results: %s ...\n", got.empty() ? "none" : got[0].c_str());
    // The first request carries the array; those after it name it.
    const auto& sizes = kept::request_sizes;
    if (sizes.size() < 3 || sizes[0] < 800'000 ||
        std::any_of(sizes.begin() + 1, sizes.end(), [](std::size_t s) { return s > 4096; })) {
      std::fprintf(stderr, "request sizes:");
      for (std::size_t s : sizes) std::fprintf(stderr, " %zu", s);
      std::fprintf(stderr, "\n");
      ok = false;
    }
    // The call ended: the worker's file is gone.
    const std::string file = files.begin()->substr(0, files.begin()->find('|'));
    if (std::filesystem::exists(file)) {
      std::fprintf(stderr, "left behind: %s\n", file.c_str());
      ok = false;
    }
    return ok && a[0] == 0.0;
  });
}

TEST(KeptBuffersTest, ARequestNamingABufferItsWorkerDoesNotHoldFailsWithASerializationError) {
  relay::in_child<kept::KeepingBackend>("keeping", [] {
    kept::forget = true;
    joblib::Array<double> a({100'001});
    try {
      Parallel({.n_jobs = 2, .backend = "keeping", .batch_size = 1, .max_nbytes = "100K"})(
          std::views::iota(0, 3) | std::views::transform([&](int) { return delayed(kept::file_and_check)(a, 0.0); }));
    } catch (const joblib::SerializationError& e) {
      const bool ok = std::string(e.what()).find("that this worker was not sent during the call") != std::string::npos;
      if (!ok) std::fprintf(stderr, "message: %s\n", e.what());
      return ok;
    }
    std::fprintf(stderr, "no SerializationError\n");
    return false;
  });
}
