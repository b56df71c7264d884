// Process backends (loky, multiprocessing): errors across the boundary,
// worker deaths, timeouts, memmapping, initializers, reuse, idle workers,
// thread caps, fault injection, and nothing left behind. Tasks are plain
// functions: they run in other processes.
#include "doc_quotes.hpp"
#include <joblib/worker_sdk.hpp>
#include "test_sync.hpp"

#include <joblib/joblib.hpp>
#include <joblib/worker.hpp>

#include <cereal/access.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <ranges>
#include <set>
#include <thread>

namespace {

namespace fs = std::filesystem;
using joblib::delayed;
using joblib::Parallel;
using ::testing::HasSubstr;
using joblib_test::kHangGuard;
using joblib_test::process_gone;
using joblib_test::wait_until;
using namespace std::chrono_literals;

struct MyError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct Unregistered : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int throw_my_error(int) { throw MyError("custom failure"); }
static int throw_unregistered(int x) {  // internal linkage on purpose
  if (x == 2) throw Unregistered("not registered");
  return x;
}
int abort_at_1(int x) {
  if (x == 1) std::abort();
  return x;
}
int exit_at_1(int x) {
  if (x == 1) ::_exit(3);
  return x;
}
int pid_of(int) { return static_cast<int>(::getpid()); }
int sleep_ms(int ms) {  // a task that takes some time: a workload, never a synchronisation
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
// The pid written to `path` (0 while there is none): a whole number, since
// the writer renames it into place.
pid_t read_pid(const std::string& path) {
  pid_t pid = 0;
  std::ifstream(path) >> pid;
  return pid;
}
// A stuck task: says which worker runs it, then hangs (30 s, so that a
// worker nobody kills ends after all); `path`.ended says it ran to its end.
int write_pid_then_hang(std::string path) {
  std::ofstream(path + ".tmp") << ::getpid();
  fs::rename(path + ".tmp", path);
  std::this_thread::sleep_for(30s);
  std::ofstream(path + ".ended");
  return 0;
}
// One task of a long run: sleeps `ms`, but the task at index `stuck` hangs
// in write_pid_then_hang(pidfile) instead.
int sleep_or_hang(int i, int stuck, std::string pidfile, int ms) {
  return i == stuck ? write_pid_then_hang(pidfile) : sleep_ms(ms);
}
// Marks its arrival in `dir`, then waits (30 s at most) until `n` tasks have
// arrived: they all meet only if they run at the same time, each in a worker
// of its own. Returns the worker's pid.
int meet_in(std::string dir, int i, int n) {
  std::ofstream(dir + "/" + std::to_string(i));
  wait_until([&] {
    const auto entries = fs::directory_iterator(dir);
    return std::distance(fs::begin(entries), fs::end(entries)) >= n;
  });
  return static_cast<int>(::getpid());
}
int pid_using_array(joblib::Array<double> a) {
  (void)std::as_const(a)[a.size() - 1];
  return static_cast<int>(::getpid());
}
std::string env_of(std::string name) {
  const char* v = std::getenv(name.c_str());
  return v ? v : "";
}
std::string describe_array(joblib::Array<double> a) {
  const auto& b = a.buffer();
  return std::to_string(a.is_mapped()) + "|" + std::to_string(a.is_writable()) + "|" + (b.file ? *b.file : "") + "|" +
         std::to_string(a.size()) + "|" + std::to_string(std::as_const(a)[a.size() - 1]);
}

// Structs that travel with no serialize (aggregates) or without a default
// constructor (cereal's load_and_construct).
struct Sweep {
  std::string label;
  std::vector<double> values;
  int n = 0;
};
Sweep run_sweep(Sweep in, int k) {
  for (double& v : in.values) v *= k;
  in.label += "*" + std::to_string(k);
  in.n += k;
  return in;
}
struct Reading {
  explicit Reading(double v) : value(v) {}
  double value;
  template <class Archive>
  void save(Archive& ar) const {
    ar(value);
  }
  template <class Archive>
  static void load_and_construct(Archive& ar, cereal::construct<Reading>& construct) {
    double v = 0;
    ar(v);
    construct(v);
  }
};
Reading twice(Reading r) { return Reading(r.value * 2); }
struct HoldsPointer {
  int* p = nullptr;
};
int read_pointer(HoldsPointer h) { return h.p ? *h.p : 0; }

int g_initialized = 0;
void init_worker(int value) { g_initialized = value; }
int initialized_value(int) { return g_initialized; }

// Waits until `pid` has ended; the bound is only a hang guard.
bool wait_gone(pid_t pid) { return wait_until([pid] { return process_gone(pid); }); }

// Whether `pid` is a child of this process, running or a zombie (not yet reaped).
bool is_our_child(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!std::getline(stat, s)) return false;
  const auto close = s.rfind(')');
  if (close == std::string::npos) return false;
  char state = 0;
  long ppid = 0;
  std::istringstream rest(s.substr(close + 2));
  rest >> state >> ppid;
  return ppid == ::getpid();
}

std::vector<pid_t> zombie_children() {
  std::vector<pid_t> out;
  for (auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string s;
    std::getline(stat, s);
    const auto close = s.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    long ppid = 0;
    std::istringstream rest(s.substr(close + 2));
    rest >> state >> ppid;
    if (ppid == ::getpid() && state == 'Z') out.push_back(std::stoi(name));
  }
  return out;
}

fs::path fresh_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("joblib_test_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<fs::path> memmap_folders(const fs::path& root) {
  std::vector<fs::path> out;
  for (auto& e : fs::directory_iterator(root))
    if (e.path().filename().string().rfind("joblib_memmapping_folder_", 0) == 0) out.push_back(e.path());
  return out;
}

// What lies under `root` (for a failure's message).
std::string listing(const fs::path& root) {
  std::string out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    out += " " + fs::relative(it->path(), root).string();
  return out;
}

class ProcessBackends : public ::testing::TestWithParam<std::string> {
 protected:
  joblib::ParallelOptions opts() const { return {.n_jobs = 2, .backend = GetParam()}; }
};

// ---- tasks calling different functions in one batch ------------------------------

int times_two(int x) { return 2 * x; }
int plus_ten(int x) { return x + 10; }

TEST_P(ProcessBackends, ABatchOfTasksCallingDifferentFunctionsRunsEachTasksOwn) {
  // A batch writes a function once for the tasks in a row that call it:
  // runs of one function and alternations both come back right.
  auto pick = [](int i) { return (i % 3 == 0 || (i / 7) % 2 == 1) ? &times_two : &plus_ten; };
  auto tasks = std::views::iota(0, 200) | std::views::transform([&](int i) { return delayed(pick(i))(i); });
  joblib::ParallelOptions o = opts();
  o.batch_size = 50;
  const std::vector<int> got = Parallel(o)(tasks);
  ASSERT_EQ(got.size(), 200u);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(got[std::size_t(i)], pick(i)(i)) << i;
}

// ---- errors across the boundary -----------------------------------------------

TEST_P(ProcessBackends, RegisteredExceptionKeepsItsType) {
  joblib::register_exception_type<MyError>();
  try {
    Parallel(opts()).map(throw_my_error, std::views::iota(0, 3)).to_vector();
    FAIL();
  } catch (const MyError& e) {
    EXPECT_STREQ(e.what(), "custom failure");
  }
}

TEST_P(ProcessBackends, UnknownExceptionIsTaskErrorWithTheRemoteTrace) {
  try {
    Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 1}).map(throw_unregistered, std::views::iota(0, 5)).to_vector();
    FAIL();
  } catch (const joblib::TaskError& e) {
    EXPECT_THAT(e.type_name(), HasSubstr("Unregistered"));
    EXPECT_EQ(e.message(), "not registered");
    EXPECT_EQ(e.task_index(), 2u);
    EXPECT_THAT(e.function(), HasSubstr("throw_unregistered"));  // internal linkage included
    EXPECT_THAT(e.remote_traceback(), HasSubstr("throw_unregistered"));
    EXPECT_THAT(e.what(), HasSubstr("Unregistered"));
    EXPECT_THAT(e.what(), HasSubstr("throw_unregistered"));
    // The layout docs/errors.md shows: type, task, function, message, then the trace.
    EXPECT_EQ(std::string(e.what()), e.type_name() + " in task 2 (" + e.function() + "): not registered\n\nWorker traceback:\n" +
                                         e.remote_traceback());
    EXPECT_EQ(e.remote_traceback().rfind(" 0# ", 0), 0u) << e.remote_traceback();
    joblib_test::expect_doc_quotes("errors.md", "Unregistered in task 3 (unreg(int)): nope\n\n  Worker traceback:\n   0# unreg(int) at");
  }
}

TEST_P(ProcessBackends, WorkerKilledBySignalIsTerminatedWorkerError) {
  try {
    Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 1}).map(abort_at_1, std::views::iota(0, 4)).to_vector();
    FAIL();
  } catch (const joblib::TerminatedWorkerError& e) {
    EXPECT_THAT(e.what(), HasSubstr("{SIGABRT(-6)}"));
    EXPECT_THAT(e.what(), HasSubstr("A worker process managed by the executor was unexpectedly terminated."));
    EXPECT_THAT(e.what(), HasSubstr("It was running task 1 of the call ("));
    EXPECT_THAT(e.what(), HasSubstr("abort_at_1"));
    // The whole text, as docs/errors.md shows it (with that run's pid).
    const std::string text = std::regex_replace(std::string(e.what()), std::regex("pid [0-9]+"), "pid 14949");
    EXPECT_EQ(text,
              "A worker process managed by the executor was unexpectedly terminated. This could be caused by a "
              "segmentation fault while calling the function or by an excessive memory usage causing the Operating "
              "System to kill the worker.\n\nThe exit codes of the workers are {SIGABRT(-6)}\nThe worker (pid 14949) "
              "was running a batch of 1 task.\nIt was running task 1 of the call ((anonymous "
              "namespace)::abort_at_1(int)).");
    std::stringstream lines(text);
    for (std::string line; std::getline(lines, line);)
      if (!line.empty()) joblib_test::expect_doc_quotes("errors.md", "\n  " + line + "\n");
  }
  std::vector<int> r = Parallel(opts()).map(pid_of, std::views::iota(0, 4));  // the pool is rebuilt
  EXPECT_EQ(r.size(), 4u);
}

TEST_P(ProcessBackends, WorkerExitIsTerminatedWorkerError) {
  try {
    Parallel({.n_jobs = 2, .backend = GetParam(), .batch_size = 1}).map(exit_at_1, std::views::iota(0, 4)).to_vector();
    FAIL();
  } catch (const joblib::TerminatedWorkerError& e) {
    EXPECT_THAT(e.what(), HasSubstr("{EXIT(3)}"));
  }
}

TEST_P(ProcessBackends, TaskThatCannotTravelIsRefusedBeforeAnyTaskRuns) {
  int produced = 0;
  const int k = 3;
  auto tasks = std::views::iota(0, 4) | std::views::transform([&produced, k](int i) {
                 ++produced;
                 return delayed([k](int x) { return x + k; })(i);
               });
  try {
    Parallel p(opts());
    p(tasks).to_vector();
    FAIL();
  } catch (const joblib::SerializationError& e) {
    EXPECT_THAT(e.what(), HasSubstr("cannot travel to another process"));
    EXPECT_THAT(e.what(), HasSubstr("lambda without captures"));
  }
  EXPECT_EQ(produced, 0);
}

TEST_P(ProcessBackends, ACapturingLambdaIsNamedWithItsPortableRewrite) {
  const int k = 3;
  try {
    Parallel p(opts());
    p(std::vector{delayed([k](int x) { return x + k; })(1)}).to_vector();
    FAIL();
  } catch (const joblib::SerializationError& e) {
    EXPECT_THAT(e.what(), HasSubstr("is a lambda that captures, and captures never travel to another process"));
    EXPECT_THAT(e.what(), HasSubstr("Rewrite it as a free function or a lambda without captures that takes the "
                                    "captured values as arguments"));
    // The message docs/errors.md quotes, with this lambda's name in place of main's.
    const std::string what = e.what();
    const std::string head = "cannot use the " + GetParam() + " backend: tasks of type joblib::Delayed<";
    const std::string tail =
        " is a lambda that captures, and captures never travel to another process (they may be references). Rewrite "
        "it as a free function or a lambda without captures that takes the captured values as arguments: instead of "
        "delayed([&data, k](int i) { ... })(i), write delayed([](const Data& data, int k, int i) { ... })(data, k, i)";
    ASSERT_EQ(what.rfind(head, 0), 0u) << what;
    ASSERT_GE(what.size(), tail.size());
    EXPECT_EQ(what.substr(what.size() - tail.size()), tail) << what;
    const auto lambda_end = what.find(", int> cannot travel to another process: its callable ");
    ASSERT_NE(lambda_end, std::string::npos) << what;
    const std::string lambda = what.substr(head.size(), lambda_end - head.size());
    EXPECT_EQ(what, head + lambda + ", int> cannot travel to another process: its callable " + lambda + tail);
    joblib_test::expect_doc_quotes(
        "errors.md", "`" + joblib_test::replace_all(joblib_test::replace_all(what, lambda, "main::{lambda(int)#1}"),
                                                    GetParam(), "loky") + "`");
  }
}

TEST_P(ProcessBackends, ATypeErasedTaskIsRefusedBeforeAnyTaskRuns) {
  std::vector<joblib::Task<int>> tasks;
  tasks.push_back(delayed(pid_of)(1));
  try {
    Parallel p(opts());
    p(std::move(tasks)).to_vector();
    FAIL() << "a Task<int> was sent to a worker";
  } catch (const joblib::SerializationError& e) {
    const std::string fixed =
        "only joblib::delayed(f)(args...) tasks travel to other processes (a type-erased joblib::Task or another "
        "callable has no portable form)";
    EXPECT_EQ(std::string(e.what()), "cannot use the " + GetParam() +
                                         " backend: tasks of type joblib::Task<int> cannot travel to another process: " +
                                         fixed);
    joblib_test::expect_doc_quotes("errors.md", "`... " + fixed + "`");
  }
}

void failing_initializer() { throw std::runtime_error("no licence for this worker"); }

TEST_P(ProcessBackends, AFailingInitializerIsABackendErrorWithItsMessage) {
  try {
    Parallel({.n_jobs = 2, .backend = GetParam(), .initializer = joblib::initializer(failing_initializer)})
        .map(pid_of, std::views::iota(0, 2))
        .to_vector();
    FAIL() << "the call ran without its initializer";
  } catch (const joblib::BackendError& e) {
    EXPECT_STREQ(e.what(), "the worker initializer failed: no licence for this worker");
    joblib_test::expect_doc_quotes("errors.md", "`the worker initializer failed: <its error>`");
  }
  std::vector<int> r = Parallel(opts()).map(pid_of, std::views::iota(0, 2));  // later calls work
  EXPECT_EQ(r.size(), 2u);
}

TEST_P(ProcessBackends, AggregatesTravelWithNoSerialize) {
  Parallel p(opts());
  std::vector<Sweep> out =
      p(std::views::iota(1, 5) | std::views::transform([](int k) {
                         return delayed(run_sweep)(Sweep{"s", {1.0, 2.0}, 10}, k);
                       }));
  ASSERT_EQ(out.size(), 4u);
  EXPECT_EQ(out[3].label, "s*4");
  EXPECT_EQ(out[3].values, (std::vector<double>{4.0, 8.0}));
  EXPECT_EQ(out[3].n, 14);
}

TEST_P(ProcessBackends, ATypeWithoutDefaultConstructorTravelsByLoadAndConstruct) {
  Parallel p(opts());
  std::vector<Reading> out = p(std::vector{delayed(twice)(Reading(1.5)), delayed(twice)(Reading(4))});
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].value, 3.0);
  EXPECT_EQ(out[1].value, 8.0);
}

TEST_P(ProcessBackends, AnArgumentThatCannotTravelIsNamedWithItsField) {
  try {
    Parallel p(opts());
    p(std::vector{delayed(read_pointer)(HoldsPointer{})}).to_vector();
    FAIL();
  } catch (const joblib::SerializationError& e) {
    const std::string argument =
        "argument 1 of type (anonymous namespace)::HoldsPointer cannot be encoded: its field 1 of type int* cannot be "
        "encoded (raw pointers never travel: store the value, a std::unique_ptr or an index)";
    EXPECT_THAT(e.what(), HasSubstr(argument));
    joblib_test::expect_doc_quotes(
        "errors.md",
        "`... " + joblib_test::replace_all(argument, "(anonymous namespace)::HoldsPointer", "HoldsPointer") + "`");
  }
}

TEST_P(ProcessBackends, TimeoutKillsTheStuckWorker) {
  const fs::path dir = fresh_dir("timeout");
  const std::string pidfile = (dir / "pid").string();
  // Workers already running (loky keeps them): the 0.5 s clock times the task, not a worker's start.
  std::vector<int> warm = Parallel(opts()).map(pid_of, std::views::iota(0, 2));
  std::string what;
  try {
    Parallel({.n_jobs = 2, .backend = GetParam(), .timeout = 0.5})
        .map(write_pid_then_hang, std::vector<std::string>{pidfile})
        .to_vector();
    ADD_FAILURE() << "no timeout";
  } catch (const joblib::TimeoutError& e) {
    what = e.what();
    joblib_test::expect_doc_quotes("backends.md", "`timed as a batch`");
  }
  EXPECT_FALSE(fs::exists(pidfile + ".ended")) << "the call waited for the stuck task";
  const pid_t pid = read_pid(pidfile);
  ASSERT_GT(pid, 0);
  // A batch travels whole, so it is timed whole (docs/backends.md: "timed as
  // a batch"); the message names the worker that ran it.
  EXPECT_EQ(what, "a task ran longer than the timeout of 0.5 s (timed as a batch of 1 task starting at task 0, on "
                  "worker process " + std::to_string(pid) + ")");
  EXPECT_TRUE(wait_gone(pid));
  EXPECT_FALSE(fs::exists(pidfile + ".ended")) << "the stuck worker was not killed";
  fs::remove_all(dir);
  std::vector<int> r = Parallel(opts()).map(pid_of, std::views::iota(0, 2));
  EXPECT_EQ(r.size(), 2u);
}

// ---- memmapping ------------------------------------------------------------------

TEST_P(ProcessBackends, LargeArrayIsWrittenOnceAndMappedReadOnly) {
  const fs::path root = fresh_dir("memmap");
  joblib::Array<double> big({300000});  // 2.4 MB > 1M
  big[big.size() - 1] = 42.0;
  std::vector<std::string> seen = Parallel({.n_jobs = 2, .backend = GetParam(), .temp_folder = root.string()})(
      std::views::iota(0, 8) | std::views::transform([&](int) { return delayed(describe_array)(big); }));
  std::set<std::string> distinct(seen.begin(), seen.end());
  ASSERT_EQ(distinct.size(), 1u) << "the array must be written once per call";
  const std::string d = *distinct.begin();
  EXPECT_THAT(d, HasSubstr("1|0|"));  // mapped, not writable (mmap_mode r)
  EXPECT_THAT(d, HasSubstr(root.string() + "/joblib_memmapping_folder_" + std::to_string(::getpid()) + "_"));
  EXPECT_THAT(d, HasSubstr("|300000|42"));
  EXPECT_TRUE(memmap_folders(root).empty()) << "the folder is removed when the call ends";
  fs::remove_all(root);
}

TEST_P(ProcessBackends, WritableMmapModeGivesWritableMaps) {
  const fs::path root = fresh_dir("memmap_rw");
  joblib::Array<double> big({300000});
  std::vector<std::string> seen =
      Parallel({.n_jobs = 2, .backend = GetParam(), .temp_folder = root.string(), .mmap_mode = joblib::MmapMode::r_plus})(
          std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(describe_array)(big); }));
  EXPECT_THAT(seen[0], HasSubstr("1|1|"));
  fs::remove_all(root);
}

TEST_P(ProcessBackends, MaxNbytesNoneSendsCopies) {
  const fs::path root = fresh_dir("memmap_none");
  joblib::Array<double> big({300000});
  std::vector<std::string> seen =
      Parallel({.n_jobs = 2, .backend = GetParam(), .temp_folder = root.string(), .max_nbytes = std::nullopt})(
          std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(describe_array)(big); }));
  EXPECT_THAT(seen[0], HasSubstr("0|1||"));
  EXPECT_TRUE(memmap_folders(root).empty());
  fs::remove_all(root);
}

TEST_P(ProcessBackends, FolderIsRemovedWhenATaskFails) {
  const fs::path root = fresh_dir("memmap_fail");
  joblib::Array<double> big({300000});
  EXPECT_THROW(Parallel({.n_jobs = 2, .backend = GetParam(), .temp_folder = root.string()})(
                   std::views::iota(0, 4) | std::views::transform([&](int i) {
                     return delayed([](joblib::Array<double> a, int x) -> int {
                       if (x == 2) throw std::runtime_error("fail");
                       return static_cast<int>(a.size());
                     })(big, i);
                   }))
                   .to_vector(),
               std::runtime_error);
  EXPECT_TRUE(memmap_folders(root).empty());
  fs::remove_all(root);
}

// Under mpirun (ctest's mpi.process), the mpi backend joins; the cases that
// kill or time out a worker have their MPI versions in tests/mpi/mpi_app.cpp.
std::vector<std::string> process_backends() {
  std::vector<std::string> names{"loky", "multiprocessing"};
  const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
  if (size && std::atoi(size) > 1) names.push_back("mpi");
  return names;
}
INSTANTIATE_TEST_SUITE_P(Backends, ProcessBackends, ::testing::ValuesIn(process_backends()));

TEST(MemmapTest, FoldersOfDeadProcessesAreRemovedAtTheNextStart) {
  // A root of its own per run: a program sweeps each root once.
  static int run = 0;
  const fs::path root = fresh_dir("stale" + std::to_string(run++));
  // A folder whose lock nobody holds (its owner died) goes; one whose lock is
  // held stays, whatever pid its name shows (the owner may live in another
  // PID namespace sharing the folder, where our pids mean nothing).
  const fs::path stale = root / "joblib_memmapping_folder_4194305_deadbeef";
  fs::create_directories(stale);
  std::ofstream(stale / "x.bin") << "left by a crash";
  std::ofstream(stale / ".lock");
  const fs::path live = root / "joblib_memmapping_folder_4194306_feedbeef";  // no such pid here
  fs::create_directories(live);
  std::ofstream(live / ".lock");
  const int held = ::open((live / ".lock").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_EQ(::flock(held, LOCK_EX), 0);
  joblib::Array<double> big({300000});
  std::vector<std::string> r = Parallel({.n_jobs = 2, .backend = "loky", .temp_folder = root.string()})(
      std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(describe_array)(big); }));
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(live / ".lock"));
  ::close(held);
  fs::remove_all(root);
}

// ---- the loky pool ------------------------------------------------------------------

TEST(LokyTest, WorkersAreReusedAcrossCalls) {
  // sleep_ms spreads work over both workers; the pids asserted do not depend on its timing.
  std::set<int> pids;
  for (int call = 0; call < 3; ++call) {
    std::vector<int> r = Parallel({.n_jobs = 2, .backend = "loky", .batch_size = 1}).map(sleep_ms, std::vector{20, 20, 20, 20});
    std::vector<int> p = Parallel({.n_jobs = 2, .backend = "loky"}).map(pid_of, std::views::iota(0, 8));
    pids.insert(p.begin(), p.end());
  }
  EXPECT_LE(pids.size(), 2u);
  EXPECT_EQ(pids.count(static_cast<int>(::getpid())), 0u);
}

TEST(LokyTest, InitializerRunsInEveryWorkerAndKeysReuse) {
  auto run = [](int value) {
    std::vector<int> seen = Parallel({.n_jobs = 2, .backend = "loky", .initializer = joblib::initializer(init_worker, value)})
                                .map(initialized_value, std::views::iota(0, 4));
    std::vector<int> pids = Parallel({.n_jobs = 2, .backend = "loky", .initializer = joblib::initializer(init_worker, value)})
                                .map(pid_of, std::views::iota(0, 4));
    for (int v : seen) EXPECT_EQ(v, value);
    return std::set<int>(pids.begin(), pids.end());
  };
  std::set<int> a = run(7), b = run(7), c = run(9);
  std::set<int> ab(a);
  ab.insert(b.begin(), b.end());
  EXPECT_LE(ab.size(), 2u) << "identical initializer: the same workers";
  for (int p : c) EXPECT_EQ(a.count(p), 0u) << "another initializer: new workers";
}

TEST(LokyTest, IdleWorkersLeaveAndAreRestarted) {
  joblib::parallel_backend scope("loky", {.n_jobs = 2, .settings = {{"idle_worker_timeout", "0.3"}}});
  std::vector<int> pids = Parallel().map(pid_of, std::views::iota(0, 4));
  const std::set<int> first(pids.begin(), pids.end());
  for (int p : first) EXPECT_TRUE(wait_gone(p)) << p << " did not leave idle";
  std::vector<int> again = Parallel().map(pid_of, std::views::iota(0, 4));
  ASSERT_EQ(again.size(), 4u);
  for (int p : again) EXPECT_EQ(first.count(p), 0u) << "the call ran on fresh workers";
}

TEST(LokyTest, ABadIdleWorkerTimeoutIsRefusedWithItsValue) {
  joblib::parallel_backend scope("loky", {.n_jobs = 2, .settings = {{"idle_worker_timeout", "soon"}}});
  try {
    Parallel().map(pid_of, std::views::iota(0, 2)).to_vector();
    FAIL() << "idle_worker_timeout 'soon' was accepted";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_EQ(what,
              "idle_worker_timeout must be a finite number of seconds from 0 to 2e+06 (0: workers never leave), got "
              "'soon'");
    joblib_test::expect_doc_quotes("errors.md",
                                   "`std::invalid_argument(\"" + joblib_test::replace_all(what, "soon", "<value>") + "\")`");
  }
}

TEST(LokyTest, WorkersGetThreadCaps) {
  const char* parent = std::getenv("OMP_NUM_THREADS");
  std::vector<std::string> r = Parallel({.n_jobs = 2, .backend = "loky"}).map(env_of, std::vector<std::string>{"OMP_NUM_THREADS"});
  const std::string expected = parent ? parent : std::to_string(std::max(joblib::cpu_count() / 2, 1));
  EXPECT_EQ(r[0], expected);
  joblib::parallel_backend scope("loky", {.n_jobs = 2, .inner_max_num_threads = 3});
  std::vector<std::string> capped = Parallel().map(env_of, std::vector<std::string>{"OMP_NUM_THREADS"});
  EXPECT_EQ(capped[0], "3");
}

TEST(LokyTest, FaultInjectionKillsARandomWorkerDuringALongRun) {
  const fs::path dir = fresh_dir("fault");
  const std::string pidfile = (dir / "pid").string();
  std::vector<int> warm = Parallel({.n_jobs = 2, .backend = "loky"}).map(pid_of, std::views::iota(0, 4));
  // The worker killed is the one that reaches a random task of the run: that
  // task waits to be killed, so the kill lands while the worker is busy.
  std::mt19937 rng(std::random_device{}());
  const int victim = std::uniform_int_distribution<int>(0, 199)(rng);
  std::thread killer([&] {
    pid_t pid = 0;
    if (wait_until([&] { return (pid = read_pid(pidfile)) > 0; }) && pid != ::getpid()) ::kill(pid, SIGKILL);
  });
  try {
    auto run = std::views::iota(0, 200) | std::views::transform([&](int i) {
                 return delayed(sleep_or_hang)(i, victim, pidfile, 20);
               });
    Parallel({.n_jobs = 2, .backend = "loky", .batch_size = 1})(run).to_vector();
    ADD_FAILURE() << "the call should have failed";
  } catch (const joblib::TerminatedWorkerError& e) {
    EXPECT_THAT(e.what(), HasSubstr("{SIGKILL(-9)}"));
  }
  killer.join();
  fs::remove_all(dir);
  std::vector<int> next = Parallel({.n_jobs = 2, .backend = "loky"}).map(sleep_ms, std::vector<int>(10, 1));
  EXPECT_EQ(next, std::vector<int>(10, 1));
}

// ---- fork ------------------------------------------------------------------------------

int nested_threads_in_worker(int) {
  std::vector<int> r = Parallel({.n_jobs = 2}).map(pid_of, std::views::iota(0, 4));  // threading, level 1
  return static_cast<int>(r.size());
}

TEST(MultiprocessingTest, ForkedWorkersCanUseThreadPoolsTheParentAlreadyHad) {
#if defined(__SANITIZE_ADDRESS__)
  // docs/testing.md: a forked worker that starts threads can deadlock inside
  // GCC 12's ASan allocator (not fork-safe), whatever joblib does.
  GTEST_SKIP() << "ASan's allocator (GCC 12) is not fork-safe: a forked worker that starts threads can deadlock in it";
#endif
  // Make the parent own a level-1 threading pool, then fork workers that use one.
  std::vector<int> warm = Parallel({.n_jobs = 2})(std::views::iota(0, 2) | std::views::transform([](int) {
                                                  return delayed(nested_threads_in_worker)(0);
                                                }));
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = "multiprocessing"}).map(nested_threads_in_worker, std::views::iota(0, 4));
  EXPECT_EQ(r, std::vector<int>(4, 4));
}

// ---- nothing left behind ----------------------------------------------------------------

TEST(ProcessCleanupTest, NoZombieAndNoMemmapFolderLeft) {
  joblib::Array<double> big({300000});
  std::vector<int> workers = Parallel({.n_jobs = 2, .backend = "multiprocessing"})(
      std::views::iota(0, 2) | std::views::transform([&](int) { return delayed(pid_using_array)(big); }));
  // The call's workers are reaped; so is any other worker that left (drivers
  // reap those on their next tick: waited for, within a hang guard).
  EXPECT_TRUE(wait_until([&] {
    return zombie_children().empty() && std::none_of(workers.begin(), workers.end(), is_our_child);
  }));
  EXPECT_TRUE(zombie_children().empty());
  for (int w : workers) EXPECT_FALSE(is_our_child(w)) << w;
  const std::string mine = "joblib_memmapping_folder_" + std::to_string(::getpid()) + "_";
  for (const fs::path& root : {fs::path("/dev/shm"), fs::temp_directory_path()}) {
    if (!fs::exists(root)) continue;
    for (auto& e : fs::directory_iterator(root)) EXPECT_NE(e.path().filename().string().rfind(mine, 0), 0u) << e.path();
  }
}

}  // namespace

// ---- Ctrl-C and a dying parent ------------------------------------------------------------

namespace {

struct Child {
  pid_t pid = -1;
  FILE* out = nullptr;
};

Child start_child(const std::string& mode, const fs::path& root) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  Child c;
  c.pid = ::fork();
  if (c.pid == 0) {
    ::dup2(fds[1], 1);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execl(JOBLIB_TEST_INTERRUPT_CHILD, JOBLIB_TEST_INTERRUPT_CHILD, mode.c_str(), root.c_str(), nullptr);
    ::_exit(127);
  }
  ::close(fds[1]);
  c.out = ::fdopen(fds[0], "r");
  return c;
}

std::vector<pid_t> read_ready(Child& c) {
  char line[256] = {};
  if (!std::fgets(line, sizeof line, c.out)) return {};
  std::istringstream in(line);
  std::string word;
  in >> word;
  if (word != "READY") return {};
  std::vector<pid_t> pids;
  for (pid_t p; in >> p;) pids.push_back(p);
  return pids;
}

// The child's wait status once it has ended; nothing if it still ran after
// the hang guard (it is then killed and reaped).
std::optional<int> wait_child(pid_t pid) {
  int status = 0;
  if (wait_until([&] { return ::waitpid(pid, &status, WNOHANG) == pid; })) return status;
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return std::nullopt;
}

}  // namespace

TEST(InterruptTest, CtrlCStopsWorkersRemovesTheFolderAndEndsAsSigint) {
  const fs::path root = fresh_dir("sigint");
  Child c = start_child("sigint", root);
  std::vector<pid_t> workers = read_ready(c);
  ASSERT_EQ(workers.size(), 2u);
  ::kill(c.pid, SIGINT);
  // Its tasks would run 60 s: the program ends because of Ctrl-C, not because they finished.
  const std::optional<int> status = wait_child(c.pid);
  ASSERT_TRUE(status.has_value()) << "still running " << kHangGuard.count() << " s after Ctrl-C";
  ASSERT_TRUE(WIFSIGNALED(*status)) << *status;
  EXPECT_EQ(WTERMSIG(*status), SIGINT);
  for (pid_t w : workers) EXPECT_TRUE(wait_gone(w)) << w;
  EXPECT_TRUE(memmap_folders(root).empty()) << listing(root);
  std::fclose(c.out);
  fs::remove_all(root);
}

TEST(InterruptTest, CtrlCWithTheProgramsOwnHandlerFailsTheCall) {
  const fs::path root = fresh_dir("sigint_handled");
  Child c = start_child("sigint_handled", root);
  std::vector<pid_t> workers = read_ready(c);
  ASSERT_EQ(workers.size(), 2u);
  ::kill(c.pid, SIGINT);
  char line[512] = {};
  ASSERT_TRUE(std::fgets(line, sizeof line, c.out));
  EXPECT_THAT(std::string(line), HasSubstr("INTERRUPTED: Parallel call interrupted (SIGINT) (handler ran: 1)"));
  const std::optional<int> status = wait_child(c.pid);
  ASSERT_TRUE(status.has_value()) << "still running " << kHangGuard.count() << " s after Ctrl-C";
  ASSERT_TRUE(WIFEXITED(*status)) << *status;
  EXPECT_EQ(WEXITSTATUS(*status), 0);
  for (pid_t w : workers) EXPECT_TRUE(wait_gone(w)) << w;
  EXPECT_TRUE(memmap_folders(root).empty()) << listing(root);
  std::fclose(c.out);
  fs::remove_all(root);
}

TEST(InterruptTest, WorkersEndWhenTheirParentDies) {
  const fs::path root = fresh_dir("orphan");
  Child c = start_child("orphan", root);
  std::vector<pid_t> workers = read_ready(c);
  ASSERT_EQ(workers.size(), 2u);
  ::kill(c.pid, SIGKILL);
  EXPECT_TRUE(wait_child(c.pid).has_value());
  for (pid_t w : workers) EXPECT_TRUE(wait_gone(w)) << w;
  std::fclose(c.out);
  fs::remove_all(root);  // a folder left by a SIGKILLed parent goes at the next start
}

// ---- arrays that are already memory maps travel as references -----------------------------

namespace {
int add_one_in_place(joblib::Array<double> a, int i) {
  a[static_cast<std::size_t>(i)] += 1.0;  // writes reach the file: the parent's map sees them
  return i;
}
}  // namespace

TEST(MemmapTest, AMappedArrayTravelsAsAReferenceToItsFile) {
  const fs::path dir = fresh_dir("forward");
  const fs::path file = dir / "data.joblib";
  joblib::Array<double> a({300000});
  joblib::dump(a, file);
  auto mapped = joblib::load<joblib::Array<double>>(file, {.mmap_mode = joblib::MmapMode::r_plus});
  ASSERT_TRUE(mapped.is_mapped());
  std::vector<int> r = Parallel({.n_jobs = 2, .backend = "loky", .temp_folder = dir.string()})(
      std::views::iota(0, 4) | std::views::transform([&](int i) { return delayed(add_one_in_place)(mapped, i); }));
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(std::as_const(mapped)[i], 1.0) << i;
  EXPECT_TRUE(memmap_folders(dir).empty()) << "no copy was written";
  fs::remove_all(dir);
}

TEST(LokyTest, PoolIsResizedOnDemand) {
  const fs::path dir = fresh_dir("resize");
  // n tasks that meet (each waits until all n run): n workers at once.
  auto meeting_of = [&](int n) {
    const fs::path room = dir / std::to_string(n);
    fs::create_directories(room);
    std::vector<int> pids = Parallel({.n_jobs = n, .backend = "loky", .batch_size = 1})(
        std::views::iota(0, n) | std::views::transform([&](int i) { return delayed(meet_in)(room.string(), i, n); }));
    return std::set<int>(pids.begin(), pids.end());
  };
  EXPECT_EQ(meeting_of(2).size(), 2u);
  auto before = joblib::worker_sdk::pool_worker_pids();
  EXPECT_EQ(meeting_of(3).size(), 3u) << "three workers did not run at once";
  auto after = joblib::worker_sdk::pool_worker_pids();
  EXPECT_EQ(after.size(), 3u);
  for (pid_t p : before) EXPECT_NE(std::find(after.begin(), after.end(), p), after.end()) << "workers are kept";
  fs::remove_all(dir);
}

namespace {
double first_of(joblib::Array<double> a) { return std::as_const(a)[0]; }
}  // namespace

TEST(MemmapTest, FreshArraysAtAReusedAddressAreNotConfused) {
  // Each task gets its own large array, made lazily; a freed array's address
  // is often reused for the next one: the content must still be the new one.
  std::vector<double> r = Parallel({.n_jobs = 2, .backend = "loky", .pre_dispatch = "1", .batch_size = 1})(
      std::views::iota(0, 6) | std::views::transform([](int i) {
        joblib::Array<double> a({300000});
        a[0] = i;
        return delayed(first_of)(a);
      }));
  EXPECT_EQ(r, (std::vector<double>{0, 1, 2, 3, 4, 5}));
}

TEST(LokyTest, ShrinkingThePoolLeavesNoZombie) {
  std::set<pid_t> seen;  // every worker the pool had after a call
  for (int n : {2, 3, 2, 3, 2}) {
    std::vector<int> r = Parallel({.n_jobs = n, .backend = "loky"}).map(pid_of, std::views::iota(0, 6));
    EXPECT_EQ(r.size(), 6u);
    for (pid_t p : joblib::worker_sdk::pool_worker_pids()) seen.insert(p);
  }
  // A retired worker leaves on its own (exit frame, then SIGKILL) and is
  // reaped: wait for that (within a hang guard), then nothing else is left.
  auto retired_are_reaped = [&] {
    const auto pool = joblib::worker_sdk::pool_worker_pids();
    return std::none_of(seen.begin(), seen.end(), [&](pid_t p) {
      return std::find(pool.begin(), pool.end(), p) == pool.end() && is_our_child(p);
    });
  };
  EXPECT_TRUE(wait_until([&] {
    return retired_are_reaped() && zombie_children().empty() && joblib::worker_sdk::pool_worker_pids().size() == 2u;
  }));
  EXPECT_TRUE(zombie_children().empty());
  EXPECT_EQ(joblib::worker_sdk::pool_worker_pids().size(), 2u);
}
