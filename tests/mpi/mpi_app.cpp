// Scenarios of the mpi backend, run under mpirun by ctest (tests/CMakeLists.txt):
//   mpi_app basic       results, order, every worker rank used, errors with their type
//   mpi_app fail        main returns 3: every rank ends non-zero
//   mpi_app hosts       prints "rank R on HOST" for the ranks that ran tasks, and
//                       checks that a large array goes to each rank once per call
//   mpi_app remote_death  a rank on another host than rank 0 dies in a task
//   mpi_app stranger    connections to rank 0's ports posing as ranks kill no rank
//   mpi_app queued      quick batches queued on the ranks: results in order, messages
//                       around the ranks' 64 KiB inbox, a queued batch of a failed call
//                       never runs
//   mpi_app spawned     without mpirun: the first call spawns its workers (MPI_Comm_spawn)
//   mpi_app spawned_hold  without mpirun: spawned workers run 6 s tasks (killed by spawn_kill.sh)
//   mpi_app spawn_unavailable  without mpirun, where MPI cannot spawn 64 workers
// Each prints "OK <scenario>" when its checks hold, and returns non-zero otherwise.
#include <joblib/joblib.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <ranges>
#include <set>
#include <stop_token>
#include <thread>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {
int failures = 0;
void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what.c_str());
    ++failures;
  }
}

double root(int x) { return std::sqrt(double(x)); }
int rank_of(int) {
  const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
  return r ? std::atoi(r) : -1;
}
// The host (and network namespace: the multi-host test's two "hosts" share
// one machine) and rank a task ran on.
std::string where(int) {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  char ns[128] = {};
  const ssize_t n = ::readlink("/proc/self/ns/net", ns, sizeof ns - 1);
  return std::string(host) + " netns " + (n > 0 ? std::string(ns, static_cast<std::size_t>(n)) : "?") + " rank " +
         std::to_string(rank_of(0));
}
std::string host_name_of_this_machine() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}
// Runs until its call is stopped (20 s at most).
int rank_after_1ms(int x) {
  ::usleep(1000);
  return rank_of(x);
}
int hang_until_stopped(int x) {
  for (int i = 0; i < 20000 && !joblib::stop_requested(); ++i) ::usleep(1000);
  return x;
}
// Ignores stops: holds its rank for 6 s.
int ignore_stop(int x) {
  ::usleep(6000000);
  return x;
}
int die_at_1(int x) {
  if (x == 1) ::_exit(7);
  ::usleep(200000);
  return x;
}
int fail_at_3(int x) {
  if (x == 3) throw std::invalid_argument("bad input: 3");
  return x;
}
// Kills its process the first time it sees `i` (a marker file in `dir`).
int die_once(std::string dir, int i) {
  const std::string marker = dir + "/" + std::to_string(i);
  if (!std::filesystem::exists(marker)) {
    std::ofstream(marker) << 1;
    std::abort();
  }
  return i * 10;
}
// The process a task ran in, and its rank.
std::string pid_and_rank(int) { return std::to_string(::getpid()) + "@" + std::to_string(rank_of(0)); }
// Touches `mb` MiB.
int use_memory(int mb) {
  std::vector<char> block(static_cast<std::size_t>(mb) << 20);
  for (std::size_t i = 0; i < block.size(); i += 4096) block[i] = 1;
  ::usleep(100000);
  return mb;
}
// A checksum of its arrays; writes into its copy, which no other task sees.
double array_sum(joblib::Array<double> a, std::vector<float> v, int k) {
  double s = k;
  for (double x : std::as_const(a)) s += x;
  for (float x : v) s += x;
  a[0] = -1000;
  return s;
}
// Keeps its array for the rest of the rank's life; true while every kept
// array still holds the value it came with (a rank reads requests into a
// block it reuses, never while a task holds a window into it).
bool kept_arrays_unchanged(joblib::Array<double> a) {
  static std::vector<std::pair<joblib::Array<double>, double>> kept;
  kept.emplace_back(a, std::as_const(a)[0]);
  for (const auto& [k, v] : kept)
    if (std::as_const(k)[0] != v || std::as_const(k)[k.size() - 1] != v) return false;
  return true;
}
// A task's exception reaches the caller with its type; large arrays, with
// and without memmapping, reach the tasks intact, and a task's write stays
// in its copy.
void errors_and_arrays(int n_jobs) {
  try {
    joblib::Parallel({.n_jobs = n_jobs, .backend = "mpi"}).map(fail_at_3, std::vector{1, 2, 3, 4});
    expect(false, "the task's exception reaches the caller");
  } catch (const std::invalid_argument& e) {
    expect(std::string(e.what()) == "bad input: 3", std::string("message: ") + e.what());
  }
  joblib::Array<double> a({300'001});
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = double(i % 10);
  std::vector<float> v(40'001, 0.5f);
  double expected = 0;
  for (double x : std::as_const(a)) expected += x;
  for (float x : v) expected += x;
  for (auto nbytes : {std::optional<std::string>(), std::optional<std::string>("1M")}) {
    std::vector<double> sums = joblib::Parallel({.n_jobs = n_jobs, .backend = "mpi", .batch_size = 3, .max_nbytes = nbytes})(
        std::views::iota(0, 9) | std::views::transform([&](int k) { return joblib::delayed(array_sum)(a, v, k); }));
    for (int k = 0; k < 9; ++k) expect(sums[std::size_t(k)] == expected + k, "array checksum");
    expect(std::as_const(a)[0] == 0.0, "a task's write stays in its copy");
  }
}
// Where it ran, the file its array is mapped from, and whether it saw the
// array as it was sent (no other task's write) with the right sum.
std::string array_where(joblib::Array<double> a, double expected_sum) {
  double s = 0;
  for (double x : std::as_const(a)) s += x;
  const bool fresh = std::as_const(a)[0] == 0.0;
  a[0] = -1;  // private to this task
  return where(0) + "|" + a.filename().string() + "|" + (fresh && s == expected_sum ? "ok" : "bad");
}
int pid_after_5ms(int) {
  ::usleep(5000);
  return static_cast<int>(::getpid());
}
// The string reversed (requests and replies of every size around 64 KiB).
std::string reversed(std::string s) { return std::string(s.rbegin(), s.rend()); }
std::int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
// Writes to dir/i when it started (the monotonic clock, one for the
// machine's processes), its rank, and whether a 1 s task of the same dir had
// ended on its rank before; from task 200 on, then holds its rank for 1 s, ignoring
// stops, and writes dir/i.end.
std::string g_long_task_ended_in;  // the dir of the last 1 s task that ended in this rank
int step(std::string dir, int i) {
  const std::string at = dir + "/" + std::to_string(i);
  {
    std::ofstream f(at + ".tmp");
    f << monotonic_ns() << " " << rank_of(0) << " " << (g_long_task_ended_in == dir ? 1 : 0);
  }
  std::filesystem::rename(at + ".tmp", at);
  if (i >= 200) {
    ::usleep(1000000);
    g_long_task_ended_in = dir;
    std::ofstream(at + ".end") << 1;
  }
  return i;
}
int nap_50ms(int i) {
  ::usleep(50000);
  return rank_of(i);
}
int nap_100ms(int i) {
  ::usleep(100000);
  return i;
}
// The TCP ports this process listens on (its sockets in /proc/net/tcp).
std::vector<int> own_listening_ports() {
  std::set<std::string> inodes;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) inodes.insert(target.substr(8, target.size() - 9));
  }
  std::vector<int> ports;
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  std::getline(tcp, line);  // header
  while (std::getline(tcp, line)) {
    std::istringstream in(line);
    std::string slot, local, remote, state, queues, timer, retr, uid, timeout, inode;
    in >> slot >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
    if (state == "0A" && inodes.count(inode)) ports.push_back(std::stoi(local.substr(local.find(':') + 1), nullptr, 16));
  }
  return ports;
}
// Connects to `port` as rank `rank` would, with a wrong token, and leaves.
void pose_as_rank(int port, std::int32_t rank) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    char hello[36] = {};
    std::memcpy(hello, &rank, sizeof rank);
    std::memset(hello + 4, 'A', 32);
    [[maybe_unused]] ssize_t n = ::send(fd, hello, sizeof hello, MSG_NOSIGNAL);
    ::usleep(20000);
  }
  ::close(fd);
}
// Dies on any host but `home`.
int die_if_remote(std::string home) {
  if (host_name_of_this_machine() != home) ::_exit(7);
  ::usleep(300000);
  return 0;
}
}  // namespace

int run(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "basic";
  if (scenario == "basic") {
    std::vector<double> r = joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(root, std::vector{0, 1, 4, 9, 16});
    expect(r == std::vector<double>{0, 1, 2, 3, 4}, "sqrt example");
    std::vector<int> ranks =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(rank_of, std::vector<int>(200, 0));
    std::set<int> used(ranks.begin(), ranks.end());
    expect(!used.count(0), "rank 0 runs no task");
    errors_and_arrays(-1);
    for (double value : {1.0, 2.0, 3.0}) {
      joblib::Array<double> b({300'000});
      for (std::size_t i = 0; i < b.size(); ++i) b[i] = value;
      std::vector<bool> unchanged = joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1,
                                                      .max_nbytes = std::nullopt})(
          std::views::iota(0, 4) | std::views::transform([&](int) { return joblib::delayed(kept_arrays_unchanged)(b); }));
      for (bool u : unchanged) expect(u, "an array a task kept is never overwritten");
    }
    std::printf("ranks used:");
    for (int r : used) std::printf(" %d", r);
    std::printf("\n");
  } else if (scenario == "fail") {
    std::vector<double> r = joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(root, std::vector{4});
    expect(r == std::vector<double>{2}, "one task");
    std::printf("OK fail (returning 3)\n");
    return 3;
  } else if (scenario == "timeout") {
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .timeout = 0.5}).map(hang_until_stopped, std::vector{1});
      expect(false, "a TimeoutError");
    } catch (const joblib::TimeoutError& e) {
      expect(std::string(e.what()).find("timeout of 0.5 s") != std::string::npos, e.what());
      expect(std::string(e.what()).find(", on MPI rank ") != std::string::npos &&
                 std::string(e.what()).find(", host " + host_name_of_this_machine()) != std::string::npos,
             std::string("the rank and its host named: ") + e.what());
    }
    // The stopped task frees its rank (it sees the stop within a few ms): a
    // later call of 100 tasks of 1 ms runs on every worker rank. (Tasks of
    // microseconds could all be done by the other rank before that.)
    std::vector<int> ranks =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(rank_after_1ms, std::vector<int>(100, 0));
    expect(std::set<int>(ranks.begin(), ranks.end()) == std::set<int>{1, 2}, "both ranks serve after a timeout");
  } else if (scenario == "held") {
    // Both ranks held by tasks that ignore the stop of their timed-out call:
    // a later call fails with a message naming them (after the 2 s grace),
    // and rank 0's exit, finding a rank still busy, ends the job with MPI_Abort.
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .timeout = 0.3, .batch_size = 1})
          .map(ignore_stop, std::vector{0, 1});
      expect(false, "a TimeoutError");
    } catch (const joblib::TimeoutError&) {
    }
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(root, std::vector{4});
      expect(false, "a BackendError");
    } catch (const joblib::BackendError& e) {
      std::printf("BackendError: %s\n", e.what());
    }
  } else if (scenario == "rank_death") {
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(die_at_1, std::vector{0, 1, 2, 3});
      expect(false, "a TerminatedWorkerError");
    } catch (const joblib::TerminatedWorkerError& e) {
      std::printf("TerminatedWorkerError: %s\n", e.what());
    }
  } else if (scenario == "resilience") {
    // max_tasks_per_child: each rank runs tasks in children it replaces after 3 tasks.
    std::vector<std::string> who =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .max_tasks_per_child = 3}).map(pid_and_rank, std::vector<int>(30, 0));
    std::map<std::string, int> per;
    std::set<std::string> ranks;
    for (const std::string& w : who) {
      ++per[w];
      ranks.insert(w.substr(w.find('@')));
    }
    for (auto& [w, n] : per) expect(n <= 3, "at most 3 tasks in " + w + ", got " + std::to_string(n));
    expect(per.size() >= 10, "workers replaced: " + std::to_string(per.size()) + " processes");
    expect(ranks.size() == 2 && !ranks.count("@0"), "tasks on ranks 1 and 2");
    // worker_memory_limit: the child over the limit is stopped and named; the next call works.
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1, .worker_memory_limit = "100M"})
          .map(use_memory, std::vector<int>{10, 800})
          .to_vector();
      expect(false, "no TerminatedWorkerError");
    } catch (const joblib::TerminatedWorkerError& e) {
      std::printf("memory: %s\n", e.what());
      expect(std::string(e.what()).find("over worker_memory_limit = 100.0 MiB (104857600 bytes)") != std::string::npos,
             std::string("the limit is named: ") + e.what());
      expect(std::string(e.what()).find("It was running task 1 of the call") != std::string::npos,
             std::string("the task is named: ") + e.what());
    }
    std::vector<int> small = joblib::Parallel({.n_jobs = -1, .backend = "mpi", .worker_memory_limit = "100M"})
                                 .map(use_memory, std::vector<int>{10, 10, 10});
    expect(small == std::vector<int>({10, 10, 10}), "the next call works");
    // Retries: a child that dies is replaced by its rank, and its task runs again.
    const std::string dir = "/tmp/mpi_app_retries_" + std::to_string(::getpid());
    std::filesystem::create_directories(dir);
    std::vector<int> again = joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1, .retries = 1,
                                               .max_tasks_per_child = 100})(
        std::views::iota(0, 6) | std::views::transform([&](int i) { return joblib::delayed(die_once)(dir, i); }));
    std::filesystem::remove_all(dir);
    expect(again == std::vector<int>({0, 10, 20, 30, 40, 50}), "every result after the children died once");
    // Outcomes: every task runs, over the ranks.
    std::vector<joblib::Outcome<int>> outcomes = joblib::Parallel({.n_jobs = -1, .backend = "mpi"})
        .outcomes(std::views::iota(0, 10) | std::views::transform([](int i) { return joblib::delayed(fail_at_3)(i); }));
    int bad = 0;
    for (auto& o : outcomes) bad += o ? 0 : 1;
    expect(outcomes.size() == 10 && bad == 1, "10 outcomes, 1 error");
    // Cancellation: the ranks' tasks see stop_requested(), the call ends with CancelledError.
    std::stop_source stop;
    std::thread canceller([&] {
      ::usleep(300000);
      stop.request_stop();
    });
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1, .stop_token = stop.get_token()})
          .map(hang_until_stopped, std::views::iota(0, 8))
          .to_vector();
      expect(false, "no CancelledError");
    } catch (const joblib::CancelledError& e) {
      std::printf("cancelled: %s\n", e.what());
    }
    canceller.join();
    // ... and with max_tasks_per_child, by killing the children.
    std::stop_source stop2;
    std::thread canceller2([&] {
      ::usleep(300000);
      stop2.request_stop();
    });
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1, .max_tasks_per_child = 1,
                        .stop_token = stop2.get_token()})
          .map(ignore_stop, std::views::iota(0, 8))
          .to_vector();
      expect(false, "no CancelledError (children)");
    } catch (const joblib::CancelledError& e) {
      std::printf("cancelled children: %s\n", e.what());
    }
    canceller2.join();
    std::vector<int> after = joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(fail_at_3, std::vector<int>{1, 2});
    expect(after == std::vector<int>({1, 2}), "a call after the cancellations works");
  } else if (scenario == "queued") {
    // Quick batches are queued on a rank behind the one it runs: every result, in order.
    const int n = 20'000;
    std::vector<int> ranks = joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1})
                                 .map(rank_of, std::vector<int>(std::size_t(n), 0));
    std::vector<double> roots =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(root, std::views::iota(0, n));
    bool in_order = true;
    for (int i = 0; i < n; ++i) in_order = in_order && roots[std::size_t(i)] == std::sqrt(double(i));
    expect(in_order, "20000 results in input order");
    expect(std::set<int>(ranks.begin(), ranks.end()) == std::set<int>{1, 2}, "both ranks ran tasks");
    // Requests and replies just under, at and over the ranks' inbox (64 KiB),
    // and far over it, queued or not.
    std::vector<std::string> texts;
    for (std::size_t len = 65536 - 400; len <= 65536 + 64; ++len) texts.push_back(std::string(len, 'a'));
    for (std::size_t len : {std::size_t{1} << 20, std::size_t{5} << 20}) texts.push_back(std::string(len, 'b'));
    for (std::string& t : texts)
      for (std::size_t k = 0; k < t.size(); k += 997) t[k] = char('c' + k % 20);
    std::vector<std::string> back =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(reversed, texts);
    std::size_t same = 0;
    for (std::size_t i = 0; i < texts.size(); ++i)
      same += back[i] == std::string(texts[i].rbegin(), texts[i].rend()) ? 1 : 0;
    expect(same == texts.size(), "every message around 64 KiB came back whole: " + std::to_string(same) + " of " +
                                     std::to_string(texts.size()));
    // Both ranks run a 1 s task, each with a batch queued behind it, when
    // the call is cancelled: the queued batches never run, and the ranks
    // serve the next call once the 1 s tasks end. Twice: a batch is queued
    // only behind a rank's quick batches, which a busy machine may slow.
    for (int round = 0; round < 2; ++round) {
      const std::string dir = "/tmp/mpi_app_queued_" + std::to_string(::getpid()) + "_" + std::to_string(round);
      std::filesystem::create_directories(dir);
      auto count = [&](const std::string& ext) {
        int n = 0;
        for (const auto& e : std::filesystem::directory_iterator(dir)) {
          const std::string name = e.path().filename().string();
          if (e.path().extension() == ext && std::stoi(name) >= 200) ++n;
        }
        return n;
      };
      std::stop_source stop;
      std::int64_t cancelled_at = 0;
      std::thread canceller([&] {
        for (int k = 0; k < 10000 && count("") < 2; ++k) ::usleep(1000);
        cancelled_at = monotonic_ns();
        stop.request_stop();
      });
      try {
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1, .stop_token = stop.get_token()})(
            std::views::iota(0, 400) | std::views::transform([&](int i) { return joblib::delayed(step)(dir, i); }));
        expect(false, "a CancelledError");
      } catch (const joblib::CancelledError&) {
      }
      canceller.join();
      // Once the 1 s tasks have ended, a rank serves a batch of the next call
      // only after what it held before (a batch queued behind its 1 s task).
      for (int k = 0; k < 10000 && count(".end") < count(""); ++k) ::usleep(1000);
      ranks = joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(nap_50ms, std::vector<int>(8, 0));
      expect(std::set<int>(ranks.begin(), ranks.end()) == std::set<int>{1, 2}, "both ranks serve the next call");
      int long_ones = 0;
      for (const auto& e : std::filesystem::directory_iterator(dir)) {
        if (e.path().has_extension()) continue;
        std::int64_t at = 0;
        int rank = 0, after_long = 0;
        std::ifstream(e.path()) >> at >> rank >> after_long;
        const int i = std::stoi(e.path().filename().string());
        long_ones += i >= 200 ? 1 : 0;
        expect(!(after_long && at > cancelled_at),
               "task " + std::to_string(i) + " started on rank " + std::to_string(rank) +
                   " after a 1 s task ended there, after its call was cancelled");
      }
      std::filesystem::remove_all(dir);
      expect(long_ones >= 2, "two 1 s tasks ran: " + std::to_string(long_ones));
    }
  } else if (scenario == "hosts") {
    std::vector<std::string> w =
        joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1}).map(where, std::vector<int>(64, 0));
    for (const std::string& s : std::set<std::string>(w.begin(), w.end())) std::printf("ran on %s\n", s.c_str());
    // A large array (over max_nbytes) goes to each rank once per call: on
    // rank 0's host through the memmap folder, elsewhere in the first
    // message, kept by the rank in a file of its own. Every task of a rank
    // maps the same file, privately; the kept files go when the call ends.
    joblib::Array<double> a({300'000});
    double expected = 0;
    for (std::size_t i = 0; i < a.size(); ++i) expected += (a[i] = double(i % 7));
    std::vector<std::string> got = joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 2})(
        std::views::iota(0, 24) | std::views::transform([&](int) { return joblib::delayed(array_where)(a, expected); }));
    std::map<std::string, std::set<std::string>> files;  // where -> files its tasks mapped
    std::set<std::string> remote_files;
    for (const std::string& g : got) {
      const std::size_t bar = g.find('|'), bar2 = g.rfind('|');
      const std::string at = g.substr(0, bar), file = g.substr(bar + 1, bar2 - bar - 1);
      expect(g.substr(bar2 + 1) == "ok", "a task saw its array as sent: " + g);
      expect(!file.empty(), "a task's large array is mapped from a file: " + g);
      files[at].insert(file);
      if (at.rfind(host_name_of_this_machine() + " ", 0) != 0) remote_files.insert(file);
    }
    for (const auto& [at, f] : files) {
      std::printf("array on %s: %zu file%s\n", at.c_str(), f.size(), f.size() == 1 ? "" : "s");
      expect(f.size() == 1, "one copy of the array per rank: " + at);
    }
    expect(!remote_files.empty(), "tasks ran on another host than rank 0's");
    bool gone = false;
    for (int i = 0; i < 300 && !gone; ++i) {
      gone = std::none_of(remote_files.begin(), remote_files.end(),
                          [](const std::string& f) { return std::filesystem::exists(f); });
      if (!gone) ::usleep(10000);
    }
    expect(gone, "a rank removes the arrays it kept once the call ends");
  } else if (scenario == "stranger") {
    // While a call runs, something connects to every port rank 0 listens
    // on, claims to be rank 1 and rank 2, and leaves: no rank is taken for
    // dead, and every task completes.
    (void)joblib::Parallel({.n_jobs = -1, .backend = "mpi"}).map(root, std::vector{1});  // the backend starts
    std::thread stranger([] {
      ::usleep(300000);
      const std::vector<int> ports = own_listening_ports();
      std::printf("rank 0 listens on %zu port(s)\n", ports.size());
      for (int port : ports)
        for (std::int32_t r : {1, 2}) pose_as_rank(port, r);
    });
    try {
      std::vector<int> r = joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1})
                               .map(nap_100ms, std::views::iota(0, 20));
      expect(r.size() == 20, "every task completed");
    } catch (const std::exception& e) {
      expect(false, std::string("a stranger killed the call: ") + e.what());
    }
    stranger.join();
  } else if (scenario == "spawned") {
    // Started without mpirun: the first call spawns its 3 workers, which
    // serve every later call; results, errors and arrays as under mpirun.
    std::vector<int> pids =
        joblib::Parallel({.n_jobs = 3, .backend = "mpi", .batch_size = 1}).map(pid_after_5ms, std::vector<int>(60, 0));
    const std::set<int> workers(pids.begin(), pids.end());
    expect(workers.size() == 3, "3 spawned workers ran tasks: " + std::to_string(workers.size()));
    expect(!workers.count(static_cast<int>(::getpid())), "the program itself runs no task");
    std::vector<double> r = joblib::Parallel({.n_jobs = 2, .backend = "mpi"}).map(root, std::vector{0, 1, 4, 9, 16});
    expect(r == std::vector<double>{0, 1, 2, 3, 4}, "a later call");
    errors_and_arrays(3);
    std::printf("spawned workers:");
    for (int p : workers) std::printf(" %d", p);
    std::printf("\n");
  } else if (scenario == "spawned_hold") {
    std::printf("program %d\n", static_cast<int>(::getpid()));
    std::fflush(stdout);
    joblib::Parallel({.n_jobs = 2, .backend = "mpi", .batch_size = 1}).map(ignore_stop, std::vector<int>(2, 0));
  } else if (scenario == "spawn_unavailable") {
    for (int attempt = 0; attempt < 2; ++attempt) {
      try {
        joblib::Parallel({.n_jobs = 64, .backend = "mpi"}).map(root, std::vector{4});
        expect(false, "a BackendError");
      } catch (const joblib::BackendError& e) {
        std::printf("BackendError: %s\n", e.what());
      }
    }
  } else if (scenario == "remote_death") {
    try {
      joblib::Parallel({.n_jobs = -1, .backend = "mpi", .batch_size = 1})
          .map(die_if_remote, std::vector<std::string>(8, host_name_of_this_machine()));
      expect(false, "a TerminatedWorkerError");
    } catch (const joblib::TerminatedWorkerError& e) {
      std::printf("TerminatedWorkerError: %s\n", e.what());
    }
  }
  if (failures == 0) std::printf("OK %s\n", scenario.c_str());
  return failures ? 1 : 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
