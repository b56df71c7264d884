// The mpi backend: tasks run on the other ranks of an Open MPI job, built on
// the worker SDK (joblib/worker_sdk.hpp). Under `mpirun -np N ./app` every
// rank starts through the main guard; this plugin's takeover (plugins.toml:
// takes_over_when = "OMPI_COMM_WORLD_SIZE") makes ranks 1..N-1 serve tasks
// before main runs, and lets rank 0 run main. In rank 0 one communication
// thread owns every MPI call of the backend: it hands batches to idle ranks
// (and a second quick batch of a call to a rank that runs one of it)
// and completes them from their replies. See docs/mpi.md.
#include <joblib/backend.hpp>
#include <joblib/config.hpp>
#include <joblib/errors.hpp>
#include <joblib/worker_sdk.hpp>

#define OMPI_SKIP_MPICXX 1  // the C API only (no libmpi_cxx)
#include <mpi.h>

#include <boost/container/small_vector.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <span>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <iterator>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace sdk = joblib::worker_sdk;
using namespace std::chrono_literals;

// ---- messages ------------------------------------------------------------------------
// One MPI message per request or reply, tagged with its kind. Each side
// keeps a receive posted into an inbox of kInbox bytes: a message over that
// travels as its size (8 bytes), then its bytes (in chunks of kChunk), all
// tagged `kind | kBig`.

enum Tag : int { kRun = 1, kReply = 2, kInit = 3, kExit = 4, kHello = 5, kCancel = 6, kForget = 7, kBig = 0x100 };
constexpr std::size_t kInbox = std::size_t{64} << 10;
constexpr std::size_t kChunk = std::size_t{1} << 30;
// The largest message Open MPI's ob1 layer sends inline (copied out at once
// by the transport, without a request: mca_pml_ob1_send_inline). Another
// layer (UCX) sends such a message eagerly too, if not inline: a blocking
// send of it completes without the receiver, at worst once the receiver next
// enters MPI (a busy rank does when it replies).
constexpr std::size_t kInlineMax = 256;

// Where the backend's messages go: MPI_COMM_WORLD in an mpirun job (rank 0
// and ranks 1..N-1); in a program started without mpirun, the
// intercommunicator to the workers it spawned (rank 0 sees them as remote
// ranks 0..N-1, they see it as remote rank 0).
MPI_Comm g_comm = MPI_COMM_WORLD;
// The first argument of a worker started with MPI_Comm_spawn.
constexpr const char* kSpawnedMark = "--joblib-mpi-spawned-worker";
// How long a batch waits for a rank held by a task whose call stopped.
constexpr auto kHeldGrace = std::chrono::seconds(2);

void send_message(int dest, int tag, std::span<const std::byte> bytes) {
  if (bytes.size() <= kInbox) {
    MPI_Send(bytes.data(), static_cast<int>(bytes.size()), MPI_BYTE, dest, tag, g_comm);
    return;
  }
  const std::uint64_t n = bytes.size();
  MPI_Send(&n, sizeof n, MPI_BYTE, dest, tag | kBig, g_comm);
  for (std::size_t off = 0; off < n; off += kChunk)
    MPI_Send(bytes.data() + off, static_cast<int>(std::min(kChunk, n - off)), MPI_BYTE, dest, tag | kBig,
             g_comm);
}

// Sends `r` (its headroom filled) without copying its buffers: a datatype
// over its pieces (after its size, over kInbox); over kChunk, flattened and
// chunked.
void send_request(int dest, int tag, const sdk::Request& r) {
  const std::uint64_t total = r.size();
  if (r.buffers.empty() || total > kChunk) {
    if (r.buffers.empty()) return send_message(dest, tag, r.bytes);
    return send_message(dest, tag, r.flatten());
  }
  if (total > kInbox) {
    MPI_Send(&total, sizeof total, MPI_BYTE, dest, tag | kBig, g_comm);
    tag |= kBig;
  }
  std::vector<int> lengths;
  std::vector<MPI_Aint> places;
  for (std::span<const std::byte> p : r.pieces()) {
    MPI_Aint a;
    MPI_Get_address(p.data(), &a);
    lengths.push_back(static_cast<int>(p.size()));
    places.push_back(a);
  }
  MPI_Datatype type;
  MPI_Type_create_hindexed(static_cast<int>(lengths.size()), lengths.data(), places.data(), MPI_BYTE, &type);
  MPI_Type_commit(&type);
  MPI_Send(MPI_BOTTOM, 1, type, dest, tag, g_comm);
  MPI_Type_free(&type);
}

// The size of the message that `st` (from a probe) announces; for one sent
// in chunks, its size message is received here.
std::size_t message_size(const MPI_Status& st) {
  if (!(st.MPI_TAG & kBig)) {
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    return static_cast<std::size_t>(count);
  }
  std::uint64_t n = 0;
  MPI_Recv(&n, sizeof n, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, g_comm, MPI_STATUS_IGNORE);
  return static_cast<std::size_t>(n);
}

// Receives the `n` bytes of that message (after message_size()) into `p`.
void receive_body(const MPI_Status& st, std::byte* p, std::size_t n) {
  if (!(st.MPI_TAG & kBig)) {
    MPI_Recv(p, static_cast<int>(n), MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, g_comm, MPI_STATUS_IGNORE);
    return;
  }
  for (std::size_t off = 0; off < n; off += kChunk)
    MPI_Recv(p + off, static_cast<int>(std::min(kChunk, n - off)), MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, g_comm,
             MPI_STATUS_IGNORE);
}

// Receives the message that `st` (from a probe) announces.
std::vector<std::byte> receive_message(const MPI_Status& st) {
  std::vector<std::byte> buf(message_size(st));
  receive_body(st, buf.data(), buf.size());
  return buf;
}

// The size of the message whose receive posted into `inbox` completed with
// `st`: what landed there, or, for one over kInbox, the size that came
// first (its bytes follow: receive_body()).
std::size_t inbox_message_size(const MPI_Status& st, const std::byte* inbox) {
  int count = 0;
  MPI_Get_count(&st, MPI_BYTE, &count);
  if (!(st.MPI_TAG & kBig)) return static_cast<std::size_t>(count);
  std::uint64_t n = 0;
  if (count == sizeof n) std::memcpy(&n, inbox, sizeof n);
  return static_cast<std::size_t>(n);
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}
int world_size_from_env() { return env_int("OMPI_COMM_WORLD_SIZE", 0); }
int world_rank_from_env() { return env_int("OMPI_COMM_WORLD_RANK", 0); }

std::string host_name() {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  return std::string(name, static_cast<std::size_t>(len));
}

// ---- liveness -------------------------------------------------------------------------
// MPI cannot tell rank 0 that a rank died (Open MPI ends the job soon after,
// and rank 0 would wait until then). So each worker rank opens a TCP
// connection to rank 0 and never writes to it again: when the rank dies, on
// whatever host, its end closes and rank 0 sees it at once. Where no
// connection can be made (a firewall), ranks on rank 0's host are still
// watched by pid.

// What a rank sends on its liveness connection: its number and the token
// rank 0 gave it over MPI, so that a stranger connecting to the port (a
// scanner, another program) is never taken for a rank.
struct LivenessHello {
  std::int32_t rank = 0;
  char token[32] = {};
};

// 32 random hex digits.
std::string random_token() {
  std::random_device rd;
  std::string t;
  for (int i = 0; i < 4; ++i) t += fmt::format("{:08x}", rd());
  return t;
}

// Rank 0: a listening socket on every address; "port token addr addr ..."
// for the ranks (127.0.0.1 last), or "" when none can be opened.
std::string open_liveness(int& listen_fd, const std::string& token) {
  listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd < 0) return {};
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  socklen_t len = sizeof a;
  if (::bind(listen_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(listen_fd, 1024) != 0 ||
      ::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(listen_fd);
    listen_fd = -1;
    return {};
  }
  std::string contact = std::to_string(ntohs(a.sin_port)) + " " + token;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) == 0) {
    for (ifaddrs* i = list; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || !(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK))
        continue;
      char text[INET_ADDRSTRLEN] = {};
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, text, sizeof text);
      contact += std::string(" ") + text;
    }
    ::freeifaddrs(list);
  }
  return contact + " 127.0.0.1";
}

// A worker rank: connects to rank 0 (each address in turn, 2 s each) and
// sends its rank; the socket stays open, unused, until the rank ends.
std::atomic<int> g_liveness_fd{-1};
void connect_liveness(std::string contact, int rank) {
  std::vector<std::string> words;
  for (std::size_t at = 0; at < contact.size();) {
    const std::size_t end = std::min(contact.find(' ', at), contact.size());
    if (end > at) words.push_back(contact.substr(at, end - at));
    at = end + 1;
  }
  if (words.size() < 3 || words[1].size() != sizeof LivenessHello::token) return;
  const int port = std::atoi(words[0].c_str());
  LivenessHello hello;
  hello.rank = rank;
  std::memcpy(hello.token, words[1].data(), sizeof hello.token);
  for (std::size_t i = 2; i < words.size(); ++i) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, words[i].c_str(), &a.sin_addr) != 1) continue;
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return;
    bool up = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (!up && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int err = 0;
      socklen_t n = sizeof err;
      up = ::poll(&p, 1, 2000) == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &n) == 0 && err == 0;
    }
    if (up) {
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
      up = ::send(fd, &hello, sizeof hello, MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof hello);
    }
    if (up) {
      g_liveness_fd = fd;
      return;
    }
    ::close(fd);
  }
}

// A process forked by a rank (its child worker, a task's fork) must not
// keep the rank's connection open after the rank dies.
void close_liveness_in_fork_child() noexcept {
  const int fd = g_liveness_fd.exchange(-1);
  if (fd >= 0) ::close(fd);
}

// ---- a worker rank ------------------------------------------------------------------
// The main thread serves requests; while one runs, a watcher thread looks for
// a cancel of it (rank 0's call was stopped) every millisecond and raises the
// flag that joblib::stop_requested() reads in the task. Every MPI call holds
// g_mpi (MPI_THREAD_SERIALIZED). A run message is [8-byte sequence]
// [RunLimits][request]; a cancel names the sequence it stops. Rank 0 may
// have sent the next request already: a cancel of it is kept, and that
// request is not run.

std::mutex g_mpi;
std::atomic<bool> g_stop{false};
std::mutex g_seq_m;                           // start_seq() and cancel_seq() (g_running_seq back to 0 needs none)
std::atomic<std::uint64_t> g_running_seq{0};  // 0: nothing runs
std::uint64_t g_last_seq = 0;                 // the last request started
std::vector<std::uint64_t> g_cancelled;       // requests cancelled before they started

// A cancel of request `seq` came: the running one sees the stop; a later
// one is not run. (One that ended already is forgotten.)
void cancel_seq(std::uint64_t seq) {
  std::lock_guard lock(g_seq_m);
  if (seq == g_running_seq.load())
    g_stop = true;
  else if (seq > g_last_seq)
    g_cancelled.push_back(seq);
}

// Request `seq` starts: false if it was cancelled before (it is then not run).
bool start_seq(std::uint64_t seq) {
  std::lock_guard lock(g_seq_m);
  g_stop = false;
  g_last_seq = seq;
  const bool cancelled = std::find(g_cancelled.begin(), g_cancelled.end(), seq) != g_cancelled.end();
  std::erase_if(g_cancelled, [&](std::uint64_t s) { return s <= seq; });
  g_running_seq = cancelled ? 0 : seq;
  return !cancelled;
}

// Rank 0's messages land in g_inbox, where a receive is kept posted (all
// under g_mpi). The serving thread takes each message; while it runs a task,
// the watcher takes the cancels: those that land in the inbox, and those
// behind a message it left there for the serving thread (g_arrived).
std::vector<std::byte> g_inbox;
MPI_Request g_inbox_request = MPI_REQUEST_NULL;
bool g_arrived = false;     // the inbox holds a message for the serving thread
MPI_Status g_arrived_status;

// Cancels the persistent receive `r` if a message may still land in it, and frees it.
void stop_receive(MPI_Request& r) {
  if (r == MPI_REQUEST_NULL) return;
  int done = 0;
  MPI_Request_get_status(r, &done, MPI_STATUS_IGNORE);  // (true too when not started)
  if (!done) MPI_Cancel(&r);
  MPI_Request_free(&r);
}

// (A persistent receive: started again for each message, set up once.)
void post_inbox() {
  if (g_inbox_request == MPI_REQUEST_NULL)
    MPI_Recv_init(g_inbox.data(), static_cast<int>(g_inbox.size()), MPI_BYTE, 0, MPI_ANY_TAG, g_comm,
                  &g_inbox_request);
  MPI_Start(&g_inbox_request);
}

// True when the inbox holds a message (its status in `st`).
bool inbox_arrived(MPI_Status& st) {
  if (g_arrived) {
    st = g_arrived_status;
    return true;
  }
  int flag = 0;
  MPI_Test(&g_inbox_request, &flag, &st);
  return flag != 0;
}

void watch_cancels() {
  for (;;) {
    std::this_thread::sleep_for(1ms);
    if (g_running_seq.load() == 0) continue;
    std::vector<std::uint64_t> seqs;
    {
      std::lock_guard lock(g_mpi);
      MPI_Status st;
      if (!g_arrived && inbox_arrived(st)) {
        if (st.MPI_TAG == kCancel) {
          std::uint64_t seq = 0;
          std::memcpy(&seq, g_inbox.data(), sizeof seq);
          seqs.push_back(seq);
          post_inbox();
        } else {
          g_arrived = true;  // the serving thread's, when its task ends
          g_arrived_status = st;
        }
      }
      while (g_arrived) {  // cancels behind it wait outside the inbox
        int flag = 0;
        MPI_Iprobe(0, kCancel, g_comm, &flag, &st);
        if (!flag) break;
        std::uint64_t seq = 0;
        MPI_Recv(&seq, sizeof seq, MPI_BYTE, 0, kCancel, g_comm, MPI_STATUS_IGNORE);
        seqs.push_back(seq);
      }
    }
    for (std::uint64_t seq : seqs) cancel_seq(seq);
  }
}

// max_tasks_per_child and worker_memory_limit: a rank cannot be replaced
// within its job, so it runs such requests in a child it forks (a worker
// that uses no MPI), replaced after max_tasks tasks, killed when its memory
// goes over the limit (and then replaced), and killed when its call is
// cancelled. The rank's own memory never grows with the tasks'.
struct RankChild {
  sdk::WorkerProcess worker;
  std::size_t tasks = 0;
  bool running = false;
};
RankChild g_child;                            // the serving thread's
std::vector<std::byte> g_last_init;           // replayed in each new child
std::atomic<pid_t> g_busy_child{0};           // the child running a request (0: none)
std::atomic<std::size_t> g_busy_limit{0};     // its memory limit (0: none)
std::atomic<std::size_t> g_killed_at{0};      // the watcher killed it at this memory
std::atomic<bool> g_killed_for_stop{false};   // the call was cancelled: it was killed

// Run message header after the sequence: max tasks per child, memory limit,
// tasks in the batch, and the call's serial number (large buffers the rank
// keeps belong to one call).
struct RunLimits {
  std::uint64_t max_tasks = 0;
  std::uint64_t memory_limit = 0;
  std::uint64_t batch_size = 0;
  std::uint64_t call = 0;
};

void watch_child() {
  for (;;) {
    std::this_thread::sleep_for(10ms);
    const pid_t pid = g_busy_child.load();
    if (pid <= 0) continue;
    if (g_stop.load() && !g_killed_for_stop.exchange(true)) {
      ::kill(pid, SIGKILL);
      continue;
    }
    const std::size_t limit = g_busy_limit.load();
    if (limit == 0 || g_killed_at.load() != 0 || sdk::resident_memory(pid) <= limit) continue;
    const std::size_t memory = sdk::private_memory(pid);
    if (memory > limit) {
      g_killed_at = memory;
      ::kill(pid, SIGKILL);
    }
  }
}

// Runs one request in the rank's child; returns the reply payload.
std::vector<std::byte> run_in_child(std::span<const std::byte> request, const RunLimits& limits) {
  if (g_child.running && limits.max_tasks > 0 && g_child.tasks > 0 &&
      g_child.tasks + limits.batch_size > limits.max_tasks) {
    g_child.worker.stop();  // its share is done: a fresh child takes this batch
    g_child = RankChild{};
  }
  if (!g_child.running) {
    sdk::WorkerOptions options;
    options.start = sdk::StartMethod::fork;
    options.initializer = g_last_init;
    try {
      g_child.worker = sdk::WorkerProcess::start(options);
    } catch (...) {
      return sdk::failure_reply(0, std::current_exception());
    }
    g_child.running = true;
    g_child.tasks = 0;
  }
  const pid_t pid = g_child.worker.pid();
  g_killed_at = 0;
  g_killed_for_stop = false;
  g_busy_limit = static_cast<std::size_t>(limits.memory_limit);
  g_busy_child = pid;
  g_child.worker.send(sdk::FrameKind::run, request);
  sdk::Received reply = g_child.worker.receive();
  g_busy_child = 0;
  if (reply.frame && reply.frame->kind == sdk::FrameKind::reply) {
    g_child.tasks += static_cast<std::size_t>(limits.batch_size);
    return std::move(reply.frame->payload);
  }
  const int status = g_child.worker.wait(1000ms);
  g_child.worker.close();
  g_child = RankChild{};
  std::exception_ptr why;
  if (g_killed_at.load() != 0)
    why = sdk::memory_limit_exceeded(pid, g_killed_at.load(), static_cast<std::size_t>(limits.memory_limit),
                                     static_cast<std::size_t>(limits.batch_size));
  else if (g_killed_for_stop.load())
    why = std::make_exception_ptr(joblib::Error("cancelled"));
  else
    why = sdk::worker_terminated(status, pid, static_cast<std::size_t>(limits.batch_size));
  return sdk::failure_reply(0, why);
}

void reply_to_rank0(std::span<const std::byte> head, std::span<const std::byte> body) {
  g_running_seq = 0;
  static std::vector<std::byte> reply;  // the serving thread's; its memory is kept up to kInbox
  reply.resize(head.size() + body.size());
  std::memcpy(reply.data(), head.data(), head.size());
  if (!body.empty()) std::memcpy(reply.data() + head.size(), body.data(), body.size());
  {
    std::lock_guard lock(g_mpi);
    send_message(0, kReply, reply);
  }
  if (reply.capacity() > kInbox) reply = {};
}

// A message received into a block: its bytes start `lead` bytes before a
// 64-byte boundary, so that a request after a header of `lead` bytes is
// aligned and its large buffers can be windows into the block. The block
// is read into again once no task holds a window into it.
struct RankMessage {
  std::shared_ptr<std::byte> block;
  std::span<const std::byte> bytes;
};
// Takes the message that arrived in the inbox (status `st`): copied, or
// (over kInbox) received now, after its size; then posts the inbox again.
RankMessage take_from_inbox(const MPI_Status& st, std::size_t lead, sdk::ReceiveBlock& block) {
  const std::size_t n = inbox_message_size(st, g_inbox.data());
  const std::size_t pad = (64 - lead % 64) % 64;
  std::shared_ptr<std::byte> held = block.get(pad + n);
  std::byte* p = held.get() + pad;
  if (st.MPI_TAG & kBig)
    receive_body(st, p, n);
  else if (n != 0)
    std::memcpy(p, g_inbox.data(), n);
  g_arrived = false;
  post_inbox();
  return {std::move(held), {p, n}};
}

// `spawned`: started by rank 0 with MPI_Comm_spawn (then this worker is
// named by its rank in the spawned group plus 1), else a rank of an mpirun job.
[[noreturn]] void serve_rank(bool spawned) {
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided);
  if (spawned) MPI_Comm_get_parent(&g_comm);
  const int my_id = world_rank_from_env() + (spawned ? 1 : 0);
  std::thread(watch_cancels).detach();
  std::thread(watch_child).detach();
  ::pthread_atfork(nullptr, nullptr, [] { close_liveness_in_fork_child(); });  // every fork, a task's own too
  sdk::ReceiveBlock block;  // messages are read into it
  {
    std::lock_guard lock(g_mpi);
    g_inbox.resize(kInbox);
    post_inbox();
  }
  // Large buffers sent once to this rank for the call `kept_call` (a rank
  // on another host than rank 0: those on its host map its memmap folder).
  // Cleared at exit: a rank ends with _exit.
  sdk::KeptBuffers kept;
  std::uint64_t kept_call = 0;
  for (;;) {
    MPI_Status st;
    RankMessage received;
    for (int i = 0;; ++i) {
      {
        std::lock_guard lock(g_mpi);
        if (inbox_arrived(st)) {
          // A run request's buffers start after its sequence and limits, an
          // init request's after its sequence: both land 64-byte aligned.
          const bool init = (st.MPI_TAG & ~kBig) == kInit;
          received = take_from_inbox(st, sizeof(std::uint64_t) + (init ? 0 : sizeof(RunLimits)), block);
          break;
        }
      }
      if (i > 2000) std::this_thread::sleep_for(std::chrono::microseconds(std::min(1000, (i - 2000) * 5)));
    }
    const std::span<const std::byte> msg = received.bytes;
    const int tag = st.MPI_TAG & ~kBig;
    if (tag == kExit) {
      int status = 0;
      if (msg.size() >= sizeof status) std::memcpy(&status, msg.data(), sizeof status);
      if (g_child.running) g_child.worker.stop();
      kept.clear();
      std::fflush(nullptr);
      std::lock_guard lock(g_mpi);
      stop_receive(g_inbox_request);
      MPI_Finalize();
      ::_exit(status);
    }
    if (tag == kForget && msg.size() >= sizeof(std::uint64_t)) {  // a call ended: its buffers go
      std::uint64_t call = 0;
      std::memcpy(&call, msg.data(), sizeof call);
      if (call == kept_call) kept.clear();
    } else if (tag == kHello) {
      if (g_liveness_fd.load() < 0 && !msg.empty())
        std::thread(connect_liveness, std::string(reinterpret_cast<const char*>(msg.data()), msg.size()),
                    my_id)
            .detach();
      const std::string info = host_name() + "\n" + std::to_string(::getpid());
      std::lock_guard lock(g_mpi);
      send_message(0, kHello, std::as_bytes(std::span(info)));
    } else if (tag == kCancel && msg.size() >= sizeof(std::uint64_t)) {
      std::uint64_t seq = 0;
      std::memcpy(&seq, msg.data(), sizeof seq);
      cancel_seq(seq);
    } else if (tag == kInit && msg.size() >= sizeof(std::uint64_t)) {
      std::uint64_t seq = 0;
      std::memcpy(&seq, msg.data(), sizeof seq);
      (void)start_seq(seq);  // sent only to an idle rank: never cancelled before it starts
      const auto init = msg.subspan(sizeof seq);
      g_last_init.assign(init.begin(), init.end());  // a child started later runs it too
      if (g_child.running) {  // the child ran another initializer: a fresh one runs this one
        g_child.worker.stop();
        g_child = RankChild{};
      }
      sdk::serve_request(init, reply_to_rank0, &g_stop);
    } else if (tag == kRun && msg.size() >= sizeof(std::uint64_t) + sizeof(RunLimits)) {
      std::uint64_t seq = 0;
      std::memcpy(&seq, msg.data(), sizeof seq);
      RunLimits limits;
      std::memcpy(&limits, msg.data() + sizeof seq, sizeof limits);
      if (!start_seq(seq)) {  // its call stopped while it waited here: rank 0 drops the reply
        const std::vector<std::byte> reply = sdk::failure_reply(0, std::make_exception_ptr(joblib::Error("cancelled")));
        reply_to_rank0(reply, {});
        continue;
      }
      const auto request = msg.subspan(sizeof seq + sizeof limits);
      if (limits.call != kept_call) {  // another call: the last one's buffers go
        kept.clear();
        kept_call = limits.call;
      }
      if (limits.max_tasks == 0 && limits.memory_limit == 0) {
        sdk::serve_request(request, reply_to_rank0, &g_stop, received.block, &kept);
      } else {
        const std::vector<std::byte> reply = run_in_child(request, limits);
        reply_to_rank0(reply, {});
      }
    }
  }
}

// This program's arguments, for the mpirun line of a message.
std::vector<std::string> command_line() {
  std::vector<std::string> out;
  std::FILE* f = std::fopen("/proc/self/cmdline", "rb");
  if (!f) return {"./app"};
  std::string cur;
  for (int c; (c = std::fgetc(f)) != EOF;) {
    if (c == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += static_cast<char>(c);
    }
  }
  std::fclose(f);
  if (out.empty()) out.push_back("./app");
  return out;
}

// The message of a program that is not an MPI job and has no workers:
// `why` says what failed; it shows the mpirun line to use.
std::string not_a_job_message(int workers, const std::string& why) {
  std::string line = "mpirun -np " + std::to_string(std::max(workers, 1) + 1);
  for (const std::string& a : command_line()) line += " " + a;
  return fmt::format(
      "the mpi backend runs tasks on the other ranks of an MPI job; this program was not started by mpirun with "
      "more than one rank, and {}: start it as `{}` (rank 0 runs main; the other ranks run tasks)",
      why, line);
}

void at_rank0_exit(int status, void*);
std::atomic<int> g_spawned{0};  // workers this program spawned (0: none)

// ---- rank 0: the engine ---------------------------------------------------------------

struct Job {
  joblib::Batch* batch = nullptr;
  sdk::CallMemmap* memmap = nullptr;
  std::vector<std::byte> initializer;
  std::uint64_t max_tasks = 0;      // max_tasks_per_child (0: none)
  std::uint64_t memory_limit = 0;   // worker_memory_limit in bytes (0: none)
  std::uint64_t serial = 0;         // the call's serial number (its identity here)
  bool may_queue = false;           // may wait on a rank behind a batch of its call (no timeout, no children)
  bool timed = false;               // its call has a timeout (whose error names the rank)
};

// A request sent without waiting (MPI_Isend): it owns its bytes, so that
// its batch may be failed and freed while the bytes are still read.
struct Sending {
  std::vector<std::byte> bytes;
  MPI_Request first = MPI_REQUEST_NULL;   // the message
  std::vector<MPI_Request> more;          // its chunks, over kChunk
  Sending() = default;
  Sending(Sending&& o) noexcept
      : bytes(std::move(o.bytes)), first(std::exchange(o.first, MPI_REQUEST_NULL)),
        more(std::move(o.more)) {}
  Sending& operator=(Sending&& o) noexcept {
    bytes = std::move(o.bytes);
    first = std::exchange(o.first, MPI_REQUEST_NULL);
    more = std::move(o.more);
    return *this;
  }
  bool active() const noexcept { return first != MPI_REQUEST_NULL || !more.empty(); }
  // True once every part is sent (the bytes may go).
  bool done() {
    int a = 1, b = 1;
    if (first != MPI_REQUEST_NULL) MPI_Test(&first, &a, MPI_STATUS_IGNORE);
    if (!more.empty()) MPI_Testall(static_cast<int>(more.size()), more.data(), &b, MPI_STATUSES_IGNORE);
    return a && b;
  }
  // Gives up on the send (its rank died): cancels and frees its requests.
  void abandon() {
    if (first != MPI_REQUEST_NULL) {
      MPI_Cancel(&first);
      MPI_Request_free(&first);
    }
    for (MPI_Request& r : more)
      if (r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
    more.clear();
  }
  void wait() {
    if (first != MPI_REQUEST_NULL) MPI_Wait(&first, MPI_STATUS_IGNORE);
    if (!more.empty()) MPI_Waitall(static_cast<int>(more.size()), more.data(), MPI_STATUSES_IGNORE);
    more.clear();
    bytes = {};
  }
};

// Sends `bytes` as a message without waiting (its size, 8 bytes, is sent at
// once when it is over kInbox).
Sending isend_message(int dest, int tag, std::vector<std::byte> bytes) {
  Sending s;
  s.bytes = std::move(bytes);
  const std::size_t n = s.bytes.size();
  if (n <= kInbox) {
    MPI_Isend(s.bytes.data(), static_cast<int>(n), MPI_BYTE, dest, tag, g_comm, &s.first);
    return s;
  }
  const std::uint64_t size = n;
  MPI_Send(&size, sizeof size, MPI_BYTE, dest, tag | kBig, g_comm);
  if (n <= kChunk) {
    MPI_Isend(s.bytes.data(), static_cast<int>(n), MPI_BYTE, dest, tag | kBig, g_comm, &s.first);
    return s;
  }
  for (std::size_t off = 0; off < n; off += kChunk) {
    s.more.emplace_back();
    MPI_Isend(s.bytes.data() + off, static_cast<int>(std::min(kChunk, n - off)), MPI_BYTE, dest, tag | kBig, g_comm,
              &s.more.back());
  }
  return s;
}

// A request of ours that a rank holds (runs, or has queued behind the one it runs).
struct Out {
  joblib::Batch* batch = nullptr;  // null until sent, and once aborted (its reply is dropped)
  std::uint64_t serial = 0;        // its call's serial number
  std::uint64_t seq = 0;           // its sequence number (0: not sent yet)
  bool cancel = false;             // its call stopped: tell the rank
  std::chrono::steady_clock::time_point sent_at{}, cancelled_at{};
  Sending sending;  // sent without waiting (comm thread only)
};

// How many requests a rank may hold: the one it runs, and one queued behind
// it so that it starts the next as soon as it replies, without waiting a
// round trip for it. A request is queued only behind one of its own call
// (no timeout), that rank's last of which took under kQuickBatch: for
// longer batches the round trip is small beside them, and a queued batch
// could wait there while another rank is idle.
constexpr std::size_t kMaxHeld = 2;
constexpr auto kQuickBatch = std::chrono::microseconds(200);

struct Rank {
  int rank = 0;  // its number in messages (1..N-1)
  int dest = 0;  // its rank in g_comm
  std::string host;
  std::string location;  // "MPI rank 2, host node7", for TimeoutError
  pid_t pid = 0;
  bool same_host = false;
  // Its requests, oldest (the one it runs) first; it replies in this order.
  boost::container::small_vector<Out, kMaxHeld> out;
  std::uint64_t quick_call = 0;  // the serial number of the call whose last batch here took under kQuickBatch
  std::chrono::steady_clock::time_point last_reply{};
  bool dead = false;
  bool busy() const { return !out.empty(); }
  // It runs a task whose call stopped (its batch was failed already).
  bool abandoned() const { return busy() && !out.front().batch; }
  // Held for over kHeldGrace by a task whose call stopped (it ignores
  // joblib::stop_requested(), or timed out).
  bool held(std::chrono::steady_clock::time_point now) const {
    return abandoned() && now - out.front().cancelled_at > kHeldGrace;
  }
  std::vector<std::byte> initializer_done;  // the initializer this rank has run
  sdk::SentBuffers sent;                    // large buffers it keeps for call `sent_call` (comm thread only)
  std::uint64_t sent_call = 0;
  std::string where() const { return fmt::format("rank {} (host {}, pid {})", rank, host, pid); }
};

std::exception_ptr cancelled() { return std::make_exception_ptr(joblib::Error("cancelled")); }

class Engine {
 public:
  static Engine& get() {
    static auto* e = new Engine();  // never destroyed: the exit handler stops it
    return *e;
  }

  // Starts the communication thread (MPI init, hello) once; throws its
  // error. Outside an mpirun job, it first spawns `spawn` workers.
  void ensure_started(int spawn) {
    std::unique_lock lock(m_);
    if (!started_) {
      started_ = true;
      spawn_ = spawn;
      if (spawn_) ::on_exit(at_rank0_exit, nullptr);  // the workers end with this program
      comm_ = std::thread([this] { run(); });
    }
    cv_.wait(lock, [this] { return ready_ || error_; });
    if (error_) std::rethrow_exception(error_);
  }

  void submit(Job job) {
    {
      std::unique_lock lock(m_);
      if (aborted_.count(job.serial)) {
        lock.unlock();
        job.batch->fail(cancelled());
        return;
      }
      queue_.push_back(std::move(job));
      queued_.store(queue_.size(), std::memory_order_relaxed);
      pushed_.store(pushed_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    cv_.notify_all();
  }

  // Call `serial` stopped: its batches fail now (0: no call, nothing to do).
  void abort(std::uint64_t serial) noexcept {
    if (serial == 0) return;
    std::vector<joblib::Batch*> dropped;
    {
      std::lock_guard lock(m_);
      aborted_.insert(serial);
      for (auto it = queue_.begin(); it != queue_.end();) {
        if (it->serial == serial) {
          dropped.push_back(it->batch);
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
      queued_.store(queue_.size(), std::memory_order_relaxed);
      // A rank cannot be stopped from here: its batch fails now, and the
      // reply it sends when its task ends is dropped.
      for (Rank& r : ranks_)
        for (Out& o : r.out)
          if (o.batch && o.serial == serial) {
            dropped.push_back(std::exchange(o.batch, nullptr));
            o.cancel = true;
            o.cancelled_at = std::chrono::steady_clock::now();
          }
      notes_ = true;
    }
    cv_.notify_all();
    for (joblib::Batch* b : dropped) b->fail(cancelled());
  }

  // The call ended: ranks drop the large buffers they kept for it.
  void forget(std::uint64_t serial) noexcept {
    if (serial == 0) return;
    {
      std::lock_guard lock(m_);
      aborted_.erase(serial);
      if (!ready_) return;
      try {
        ended_.push_back(serial);
        notes_ = true;
      } catch (...) {  // out of memory: the rank drops them at the next call
      }
    }
    cv_.notify_all();
  }

  // Rank 0 is ending with `status`: the workers are told to end with it.
  void shutdown(int status) noexcept {
    {
      std::lock_guard lock(m_);
      stopping_ = true;
      stopping_flag_ = true;
      exit_status_ = status;
      stopped_at_ = std::chrono::steady_clock::now();
      if (!started_) {
        started_ = true;  // never used: start only to release the workers
        comm_ = std::thread([this] { run(); });
      }
    }
    cv_.notify_all();
    if (comm_.joinable()) comm_.join();
  }

 private:
  void run() {
    try {
      int initialised = 0;
      MPI_Initialized(&initialised);
      if (!initialised) {
        // Workers spawned here are this program's own: as many as asked,
        // whatever the cores (the user's setting wins).
        if (spawn_) ::setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 0);
        int provided = 0;
        MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
        we_initialised_ = true;
      } else {
        int provided = 0;
        MPI_Query_thread(&provided);
        if (provided < MPI_THREAD_MULTIPLE)
          throw joblib::BackendError(
              "this program initialised MPI without MPI_THREAD_MULTIPLE, and the mpi backend calls MPI from a "
              "thread of its own: initialise it with MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided)");
      }
      int size = 0;
      if (spawn_) {
        size = spawn_workers() + 1;
      } else {
        MPI_Comm_size(MPI_COMM_WORLD, &size);
      }
      const std::string my_host = host_name();
      const std::string contact = open_liveness(listen_fd_, liveness_token_ = random_token());
      std::vector<Rank> ranks;
      for (int r = 1; r < size; ++r) {
        const int dest = spawn_ ? r - 1 : r;
        send_message(dest, kHello, std::as_bytes(std::span(contact)));
        MPI_Status st;
        MPI_Probe(dest, kHello, g_comm, &st);
        const std::vector<std::byte> info = receive_message(st);
        const std::string text(reinterpret_cast<const char*>(info.data()), info.size());
        Rank rk;
        rk.rank = r;
        rk.dest = dest;
        rk.host = text.substr(0, text.find('\n'));
        rk.pid = static_cast<pid_t>(std::atol(text.substr(text.find('\n') + 1).c_str()));
        rk.same_host = rk.host == my_host;
        rk.location = "MPI rank " + std::to_string(r) + ", host " + rk.host;
        ranks.push_back(std::move(rk));
      }
      inbox_.assign(ranks.size(), std::vector<std::byte>(kInbox));
      recv_.assign(ranks.size(), MPI_REQUEST_NULL);
      for (std::size_t i = 0; i < ranks.size(); ++i) {
        MPI_Recv_init(inbox_[i].data(), static_cast<int>(kInbox), MPI_BYTE, ranks[i].dest, MPI_ANY_TAG, g_comm,
                      &recv_[i]);
        post_receive(i);
      }
      {
        std::lock_guard lock(m_);
        ranks_ = std::move(ranks);
        ready_ = true;
      }
      cv_.notify_all();
      loop();
    } catch (...) {
      if (we_initialised_ && spawn_ && g_comm == MPI_COMM_WORLD) {  // no worker: MPI is done with
        int finalized = 0;
        MPI_Finalized(&finalized);
        if (!finalized) MPI_Finalize();
      }
      {
        std::lock_guard lock(m_);
        error_ = std::current_exception();
      }
      cv_.notify_all();
    }
  }

  // Starts spawn_ workers running this program (MPI_Comm_spawn, each
  // with kSpawnedMark as its argument); returns how many. Throws
  // BackendError naming the mpirun line to use when MPI cannot spawn.
  int spawn_workers() {
    char exe[4096] = {};
    if (::readlink("/proc/self/exe", exe, sizeof exe - 1) <= 0)
      throw joblib::BackendError(
          not_a_job_message(spawn_, "this program's file (/proc/self/exe) cannot be read to spawn workers"));
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    std::string mark = kSpawnedMark;
    char* args[] = {mark.data(), nullptr};
    std::vector<int> errors(static_cast<std::size_t>(spawn_));
    MPI_Comm inter = MPI_COMM_NULL;
    const int rc = MPI_Comm_spawn(exe, args, spawn_, MPI_INFO_NULL, 0, MPI_COMM_SELF, &inter, errors.data());
    if (rc != MPI_SUCCESS) {
      char text[MPI_MAX_ERROR_STRING] = {};
      int len = 0;
      MPI_Error_string(rc, text, &len);
      throw joblib::BackendError(not_a_job_message(
          spawn_, fmt::format("starting {} workers with MPI_Comm_spawn failed ({})", spawn_,
                              std::string(text, static_cast<std::size_t>(len)))));
    }
    g_comm = inter;
    g_spawned = spawn_;
    return spawn_;
  }

  // Hands queued jobs to ranks, completes batches from replies, watches
  // ranks for death; ends when rank 0 ends.
  void loop() {
    auto last_death_check = std::chrono::steady_clock::now();
    int idle_rounds = 0;
    unsigned busy_rounds = 0;
    std::vector<int> done_index(recv_.size());
    std::vector<MPI_Status> done_status(recv_.size());
    // When the last reply came (the time this round's sends are taken to
    // leave: a reply's batch is sent on within microseconds).
    std::optional<std::chrono::steady_clock::time_point> replied_at;
    for (;;) {
      bool progressed = dispatch(std::exchange(replied_at, std::nullopt));
      if (notes_.load(std::memory_order_relaxed) && notes_.exchange(false)) {
        send_cancels();
        send_forgets();
      }
      int count = 0;
      MPI_Testsome(static_cast<int>(recv_.size()), recv_.data(), &count, done_index.data(), done_status.data());
      for (int k = 0; k < count; ++k) {  // MPI_UNDEFINED (< 0): no receive is posted
        progressed = true;
        const auto i = static_cast<std::size_t>(done_index[static_cast<std::size_t>(k)]);
        const MPI_Status& st = done_status[static_cast<std::size_t>(k)];
        const std::span<const std::byte> msg = take_message(i, st);
        replied_at = reply_from(i, msg, (st.MPI_TAG & ~kBig) == kReply);
        post_receive(i);
      }
      // Straight on to the next message, busy or quiet for a moment: the
      // checks below run every 64 rounds, and when stopping.
      const bool stopping = stopping_flag_.load(std::memory_order_relaxed);
      if (progressed) {
        idle_rounds = 0;
        if ((++busy_rounds & 63) != 0 && !stopping) continue;
      } else if (++idle_rounds < 2000 && (idle_rounds & 63) != 0 && !stopping) {
        continue;
      }
      const auto now = std::chrono::steady_clock::now();
      if (now - last_death_check > 10ms) {
        last_death_check = now;
        check_deaths();
      }
      std::unique_lock lock(m_);
      const bool any_busy = std::any_of(ranks_.begin(), ranks_.end(), [](const Rank& r) { return r.busy(); });
      if (stopping_ && !any_busy) break;
      if (stopping_ && now - stopped_at_ > 2s) break;  // a rank still runs an abandoned task
      if (progressed || idle_rounds < 2000) continue;
      const bool work_waiting = !queue_.empty() && std::any_of(ranks_.begin(), ranks_.end(), [](const Rank& r) {
        return !r.busy() && !r.dead;
      });
      if (work_waiting) continue;
      // Nothing to do at once: sleep until a submit, a stop, or the next look.
      cv_.wait_for(lock, any_busy ? std::chrono::microseconds(std::min(1000, (idle_rounds - 2000) * 5 + 5))
                                  : std::chrono::microseconds(100000));
    }
    finish();
  }

  // Gives queued jobs to idle ranks (or queues one behind a quick batch of
  // its call, see kMaxHeld); true if one was sent. A batch stays
  // this thread's own until it is sent: only then may abort() take it (it
  // could otherwise fail, and so free, the batch while it is encoded).
  // `now`: when the reply came that this round answers, if one did.
  bool dispatch(std::optional<std::chrono::steady_clock::time_point> now) {
    if (queued_.load(std::memory_order_relaxed) == 0) return false;  // (no lock for an empty queue)
    // Jobs wait for a rank: none is freed until a reply comes or a rank dies,
    // and nothing changes for them until then or another job comes (looked
    // at again every 64 rounds all the same: a rank held by an abandoned
    // task, or a call stopped, changes what may be sent).
    const std::uint64_t pushed = pushed_.load(std::memory_order_relaxed);
    if (blocked_on_ == freed_ && blocked_pushed_ == pushed && (++blocked_rounds_ & 63) != 0) return false;
    blocked_on_ = ~std::uint64_t{0};
    bool sent = false;
    // The request last sent, handed to abort() under the next lock taken here.
    struct Sent {
      Out* slot = nullptr;
      joblib::Batch* batch = nullptr;
      std::uint64_t seq = 0;
      Sending sending;
    } last;
    for (;;) {
      Job job;
      Rank* rank = nullptr;
      Out* slot = nullptr;
      joblib::Batch* stopped = nullptr;
      std::vector<Job> failed;  // (a std::deque would allocate here, every round)
      std::string held;
      {
        std::lock_guard lock(m_);
        if (Out* o = std::exchange(last.slot, nullptr)) {
          // Sent: the batch is abort()'s to take from now on, unless its call
          // stopped meanwhile (then the rank is told, and the batch fails below).
          o->seq = last.seq;
          // The reply's time stands for the first send after it; later ones
          // (after another encoding, or an initializer) read the clock.
          o->sent_at = now ? *now : std::chrono::steady_clock::now();
          now.reset();
          o->sending = std::move(last.sending);
          if (aborted_.count(o->serial)) {
            o->cancel = true;
            o->cancelled_at = o->sent_at;
            notes_ = true;
            stopped = last.batch;
          } else {
            o->batch = last.batch;
          }
        }
        if (!queue_.empty()) {
          for (Rank& r : ranks_)
            if (!r.busy() && !r.dead) {
              rank = &r;
              break;
            }
          if (!rank && queue_.front().may_queue) {
            // Queued behind a quick batch of the same call.
            const Job& next = queue_.front();
            for (Rank& r : ranks_)
              if (!r.dead && r.out.size() < kMaxHeld && r.quick_call == next.serial &&
                  std::all_of(r.out.begin(), r.out.end(),
                              [&](const Out& o) { return o.batch && o.serial == next.serial; }) &&
                  (next.initializer.empty() || r.initializer_done == next.initializer)) {
                rank = &r;
                break;
              }
          }
          if (!rank) {
            // Every rank is dead, or held for over kHeldGrace by a task whose
            // call stopped (it ignores joblib::stop_requested(), or timed
            // out): nothing queued can run. (A task that sees the stop ends at
            // once and frees its rank well within the grace.)
            blocked_on_ = freed_;
            blocked_pushed_ = pushed;
            const auto all_ranks = [&](auto&& pred) { return std::all_of(ranks_.begin(), ranks_.end(), pred); };
            // (The clock is read only when no rank runs a task of a live call.)
            if (all_ranks([](const Rank& r) { return r.dead || r.abandoned(); }) &&
                all_ranks([t = std::chrono::steady_clock::now()](const Rank& r) { return r.dead || r.held(t); })) {
              for (const Rank& r : ranks_)
                held += (held.empty() ? "" : ", ") + r.where() + (r.dead ? " is dead" : " still runs an abandoned task");
              failed.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
              queue_.clear();
            }
          } else {
            job = std::move(queue_.front());
            queue_.pop_front();
            rank->out.emplace_back();  // its batch is not abort()'s until sent
            slot = &rank->out.back();
            slot->serial = job.serial;
          }
          queued_.store(queue_.size(), std::memory_order_relaxed);
        }
      }
      // Outside the lock: a failing batch may call back into submit().
      if (stopped) stopped->fail(cancelled());
      for (Job& j : failed)
        j.batch->fail(std::make_exception_ptr(joblib::BackendError(
            "no MPI worker rank can take this batch: " + (held.empty() ? std::string("there are none") : held))));
      if (!rank) return sent;
      // Sent on, without waiting, to a rank that is busy: it may be sending
      // us a reply at the same time, and neither send can wait for the other.
      // Only messages of at most kInlineMax bytes go to a busy rank with a
      // blocking send (a small request, a cancel, a forget, the size of a
      // large request): they always go eagerly, and Open MPI sends them
      // inline, with no request to complete later.
      const bool queued = rank->out.size() > 1;
      // Outside the lock: encoding may write memmap files. A rank on another
      // host cannot map this host's files: its buffers travel in the message.
      std::uint64_t seq = 0;
      Sending sending;
      try {
        if (!job.initializer.empty() && rank->initializer_done != job.initializer) {
          std::vector<std::byte> init(sizeof(std::uint64_t) + job.initializer.size());
          seq = ++next_seq_;
          std::memcpy(init.data(), &seq, sizeof seq);
          std::memcpy(init.data() + sizeof seq, job.initializer.data(), job.initializer.size());
          send_message(rank->dest, kInit, init);
          now.reset();  // the initializer runs before this batch is sent
          // The rank is idle: its next message is this reply.
          const auto i = static_cast<std::size_t>(rank - ranks_.data());
          MPI_Status st;
          MPI_Wait(&recv_[i], &st);
          std::exception_ptr failed_init = sdk::initializer_outcome(take_message(i, st));
          post_receive(i);
          if (failed_init) std::rethrow_exception(failed_init);
          rank->initializer_done = job.initializer;
        }
        // A rank on another host cannot map this host's files: a buffer
        // over max_nbytes travels to it once per call and it keeps it
        // (unless its tasks run in a child it forks), smaller ones travel
        // in each message.
        const bool in_child = job.max_tasks != 0 || job.memory_limit != 0;
        if (!rank->same_host && rank->sent_call != job.serial) {
          rank->sent.clear();
          rank->sent_call = job.serial;
        }
        sdk::Request request =
            rank->same_host ? sdk::encode_request_parts(*job.batch, job.memmap, kRunHead)
            : in_child      ? sdk::encode_request_parts(*job.batch, nullptr, kRunHead)
                            : sdk::encode_request_parts(*job.batch, job.memmap, kRunHead, &rank->sent);
        seq = ++next_seq_;
        const RunLimits limits{job.max_tasks, job.memory_limit, job.batch->size(), job.serial};
        std::memcpy(request.bytes.data(), &seq, sizeof seq);  // in the headroom encode_request_parts left
        std::memcpy(request.bytes.data() + sizeof seq, &limits, sizeof limits);
        if (job.timed) job.batch->set_location(rank->location);
        job.batch->started();
        if (queued && !(request.buffers.empty() && request.bytes.size() <= kInlineMax))
          sending = isend_message(rank->dest, kRun, request.buffers.empty() ? std::move(request.bytes) : request.flatten());
        else
          send_request(rank->dest, kRun, request);
        sent = true;
      } catch (...) {
        {
          std::lock_guard lock(m_);
          rank->out.pop_back();
        }
        job.batch->fail(std::current_exception());
        continue;
      }
      last = {slot, job.batch, seq, std::move(sending)};
    }
  }

  // Posts the receive of rank `i`'s next message (into its inbox): starts
  // its persistent receive again.
  void post_receive(std::size_t i) { MPI_Start(&recv_[i]); }

  // Rank `i`'s message, whose posted receive completed with `st`: in its
  // inbox, or (over kInbox) received now, after its size, into big_.
  std::span<const std::byte> take_message(std::size_t i, const MPI_Status& st) {
    const std::size_t n = inbox_message_size(st, inbox_[i].data());
    if (!(st.MPI_TAG & kBig)) return {inbox_[i].data(), n};
    if (big_.capacity() > (std::size_t{1} << 20)) big_ = {};  // the last large reply's memory is not kept
    big_.resize(n);
    receive_body(st, big_.data(), n);
    return big_;
  }

  // Stops listening to rank `i` (it died, or the job ends).
  void drop_receive(std::size_t i) { stop_receive(recv_[i]); }

  // Tells ranks that kept large buffers for a call that ended to drop them.
  void send_forgets() {
    std::vector<std::uint64_t> ended;
    {
      std::lock_guard lock(m_);
      if (ended_.empty()) return;
      ended.swap(ended_);
    }
    for (Rank& r : ranks_) {  // `sent` and `sent_call` are this thread's
      if (r.dead || r.sent.size() == 0 || std::find(ended.begin(), ended.end(), r.sent_call) == ended.end()) continue;
      MPI_Send(&r.sent_call, sizeof r.sent_call, MPI_BYTE, r.dest, kForget, g_comm);
      r.sent.clear();
      r.sent_call = 0;
    }
  }

  // Tells ranks whose batch's call stopped to stop it (their tasks see
  // joblib::stop_requested()).
  void send_cancels() {
    std::vector<std::pair<int, std::uint64_t>> todo;
    {
      std::lock_guard lock(m_);
      for (Rank& r : ranks_)
        for (Out& o : r.out)
          if (o.cancel && o.seq != 0) {
            o.cancel = false;
            if (!r.dead) todo.emplace_back(r.dest, o.seq);
          }
    }
    for (auto& [rank, seq] : todo) MPI_Send(&seq, sizeof seq, MPI_BYTE, rank, kCancel, g_comm);
  }

  // A rank replies to its requests in the order they were sent.
  // Returns when it came.
  std::chrono::steady_clock::time_point reply_from(std::size_t i, std::span<const std::byte> msg, bool is_reply) {
    joblib::Batch* batch = nullptr;
    Sending sending;
    const auto now = std::chrono::steady_clock::now();
    {
      std::lock_guard lock(m_);
      Rank& r = ranks_[i];
      if (r.out.empty()) return now;  // nothing of ours is out there: dropped
      Out& o = r.out.front();
      batch = std::exchange(o.batch, nullptr);
      sending = std::move(o.sending);
      // How long the batch took there: from when it was sent, or from the
      // rank's last reply if it waited behind that one.
      const bool quick = batch && now - std::max(o.sent_at, r.last_reply) < kQuickBatch;
      r.quick_call = quick ? o.serial : 0;
      r.last_reply = now;
      r.out.erase(r.out.begin());
      ++freed_;
    }
    sending.wait();  // received, since it replied
    if (batch) {
      if (is_reply)
        sdk::complete_batch(*batch, msg);
      else
        batch->fail(std::make_exception_ptr(joblib::SerializationError("an MPI worker sent an unexpected message")));
    }
    return now;
  }

  // Takes the ranks' liveness connections; returns the ranks whose
  // connection closed (they died). Comm thread only.
  std::set<int> closed_connections() {
    std::set<int> gone;
    if (listen_fd_ < 0) return gone;
    const auto now = std::chrono::steady_clock::now();
    for (int fd; (fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0;) {
      if (connecting_.size() >= 256) {  // a flood of strangers: not kept
        ::close(fd);
        continue;
      }
      connecting_.emplace_back(fd, now);
    }
    for (auto it = connecting_.begin(); it != connecting_.end();) {
      const int fd = it->first;
      LivenessHello hello;
      const ssize_t n = ::recv(fd, &hello, sizeof hello, MSG_PEEK);
      const bool on_its_way = (n > 0 && n < static_cast<ssize_t>(sizeof hello)) ||
                              (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
      if (on_its_way && now - it->second < 5s) {  // its hello (or the rest of it) is still coming
        ++it;
        continue;
      }
      const bool ours = n == static_cast<ssize_t>(sizeof hello) &&
                        std::memcmp(hello.token, liveness_token_.data(), sizeof hello.token) == 0 && hello.rank > 0 &&
                        std::none_of(connected_.begin(), connected_.end(),
                                     [&](const std::pair<int, int>& c) { return c.second == hello.rank; });
      if (ours) {
        (void)::recv(fd, &hello, sizeof hello, 0);
        connected_.emplace_back(fd, hello.rank);
      } else {
        ::close(fd);  // not one of ours, silent for 5 s, or it died at once
      }
      it = connecting_.erase(it);
    }
    std::vector<pollfd> watch;
    for (auto& [fd, rank] : connected_) watch.push_back({fd, POLLIN, 0});
    if (watch.empty() || ::poll(watch.data(), watch.size(), 0) <= 0) return gone;
    for (std::size_t i = 0; i < watch.size(); ++i) {
      if (!watch[i].revents) continue;
      char byte;
      const ssize_t n = ::recv(watch[i].fd, &byte, 1, MSG_DONTWAIT);
      if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))) continue;
      gone.insert(connected_[i].second);
    }
    std::erase_if(connected_, [&](const std::pair<int, int>& c) {
      if (!gone.count(c.second)) return false;
      ::close(c.first);
      return true;
    });
    return gone;
  }

  void check_deaths() {
    std::erase_if(unsent_, [](Sending& s) { return s.done(); });
    const std::set<int> gone = closed_connections();
    std::vector<std::pair<joblib::Batch*, std::string>> lost;
    {
      std::lock_guard lock(m_);
      for (std::size_t i = 0; i < ranks_.size(); ++i) {
        Rank& r = ranks_[i];
        if (r.dead) continue;
        const bool pid_gone = r.same_host && r.pid > 0 && ::kill(r.pid, 0) != 0 && errno == ESRCH;
        if (pid_gone || gone.count(r.rank)) {
          r.dead = true;
          ++freed_;
          drop_receive(i);
          for (Out& o : r.out) {
            if (o.batch) lost.emplace_back(std::exchange(o.batch, nullptr), r.where());
            // A send to it that may never complete keeps its bytes until it does.
            if (o.sending.active() && !o.sending.done()) unsent_.push_back(std::move(o.sending));
          }
          r.out.clear();
        }
      }
    }
    for (auto& [b, where] : lost)
      b->fail(std::make_exception_ptr(joblib::TerminatedWorkerError(fmt::format(
          "the MPI worker {} died while running a batch of {} task{} (killed, or it called abort or exit)", where,
          b->size(), b->size() == 1 ? "" : "s"))));
  }

  // Tells every rank to end with rank 0's status, then finalizes MPI (when
  // we initialised it) or aborts the job (when a rank still runs a task).
  void finish() {
    bool stuck = false;
    int status = 0;
    {
      std::lock_guard lock(m_);
      status = exit_status_;
      for (Rank& r : ranks_) {
        if (r.dead) continue;
        if (r.busy()) {
          stuck = true;
          continue;
        }
        send_message(r.dest, kExit, std::as_bytes(std::span(&status, 1)));
      }
    }
    if (stuck) {
      std::fprintf(stderr, "joblib: an MPI worker rank still runs a task at exit: ending the job with MPI_Abort\n");
      std::fflush(stderr);
      MPI_Abort(g_comm, status ? status : 1);  // spawned workers too
    }
    for (std::size_t i = 0; i < recv_.size(); ++i) drop_receive(i);
    for (Sending& u : unsent_) u.abandon();  // to ranks that died: never to complete
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }

  mutable std::mutex m_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  std::atomic<std::size_t> queued_{0};  // queue_.size(), read without the lock
  std::set<std::uint64_t> aborted_;  // calls stopped (serial numbers), until they end
  std::vector<Rank> ranks_;
  std::thread comm_;
  bool started_ = false, ready_ = false, stopping_ = false;
  std::atomic<bool> stopping_flag_{false};  // stopping_, read without the lock
  // A cancel or a forget may be waiting to be sent (set by abort(),
  // forget() and dispatch(), cleared by the comm thread before it sends them).
  std::atomic<bool> notes_{false};
  int spawn_ = 0;                // workers to spawn (a program started without mpirun)
  bool we_initialised_ = false;  // this backend called MPI_Init
  int exit_status_ = 0;
  std::exception_ptr error_;
  std::chrono::steady_clock::time_point stopped_at_{};  // when shutdown() came
  std::uint64_t next_seq_ = 0;  // comm thread only
  // Replies taken and ranks found dead (comm thread only): while it stays
  // at blocked_on_, the jobs queued still find no rank.
  std::uint64_t freed_ = 0, blocked_on_ = ~std::uint64_t{0}, blocked_pushed_ = 0;
  std::atomic<std::uint64_t> pushed_{0};  // jobs submitted (written under m_, read without it)
  unsigned blocked_rounds_ = 0;
  std::vector<std::uint64_t> ended_;  // calls that ended (their ranks' kept buffers go)
  std::vector<Sending> unsent_;                // sends to ranks that died (comm thread only)
  std::vector<MPI_Request> recv_;              // each rank's posted receive (comm thread only)
  std::vector<std::vector<std::byte>> inbox_;  // where it lands
  std::vector<std::byte> big_;                 // a reply over kInbox
  int listen_fd_ = -1;                          // liveness (comm thread only)
  std::string liveness_token_;                  // what ranks send to be taken for ranks
  std::vector<std::pair<int, std::chrono::steady_clock::time_point>> connecting_;  // accepted, hello not yet read
  std::vector<std::pair<int, int>> connected_;  // (fd, rank)
  static constexpr std::size_t kRunHead = sizeof(std::uint64_t) + sizeof(RunLimits);
};

// ---- start-up and exit of rank 0 --------------------------------------------------------

bool g_in_mpi_job = false;  // rank 0 of an mpirun job (set by the takeover)

void at_rank0_exit(int status, void*) { Engine::get().shutdown(status); }

// A worker forked by a process of the MPI job (a rank's child, or a
// multiprocessing worker of rank 0) uses no MPI: it dies of its own
// signals, without Open MPI's handlers printing a backtrace for it.
void default_crash_signals_in_fork_child() noexcept {
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL}) ::signal(sig, SIG_DFL);
}

void takeover(int argc, char** argv) {
  if (argc > 1 && argv && argv[1] && std::strcmp(argv[1], kSpawnedMark) == 0) serve_rank(true);
  const char* opt_out = std::getenv("JOBLIB_MPI_TAKEOVER");
  if (opt_out && std::string(opt_out) == "0") return;
  if (world_size_from_env() < 2) return;  // a job of one rank runs main alone
  sdk::at_fork_child(default_crash_signals_in_fork_child);
  if (world_rank_from_env() > 0) serve_rank(false);
  g_in_mpi_job = true;
  ::on_exit(at_rank0_exit, nullptr);  // workers end with rank 0's exit status
}

// ---- the backend ------------------------------------------------------------------------

class MpiBackend final : public joblib::ParallelBackendBase {
 public:
  using ParallelBackendBase::ParallelBackendBase;
  static std::unique_ptr<joblib::ParallelBackendBase> make(const joblib::BackendInit& init) {
    return std::make_unique<MpiBackend>(init);
  }
  std::string name() const override { return "mpi"; }
  joblib::BackendCapabilities capabilities() const noexcept override {
    joblib::BackendCapabilities c;
    c.needs_encoded_tasks = true;
    return c;
  }
  // Every worker rank of the job serves every call (at least 2, so that a
  // job with one worker rank still sends tasks to it).
  int effective_n_jobs(int n_jobs) const noexcept override {
    if (!g_in_mpi_job) return g_spawned.load() ? g_spawned.load() : std::max(n_jobs, 2);
    return std::max(world_size_from_env() - 1, 2);
  }
  std::exception_ptr start_call(const joblib::CallSettings& s) noexcept override {
    try {
      max_tasks_ = s.max_tasks_per_child ? static_cast<std::uint64_t>(*s.max_tasks_per_child) : 0;
      memory_limit_ = s.worker_memory_limit.value_or(0);
      // A batch of a call with a timeout is never queued on a rank: its
      // clock starts when it is sent.
      may_queue_ = !s.timeout && max_tasks_ == 0 && memory_limit_ == 0;
      timed_ = s.timeout.has_value();
      // Outside an mpirun job, the first call spawns its n_jobs workers,
      // and they serve every later call of the program.
      Engine::get().ensure_started(g_in_mpi_job ? 0 : std::max(s.n_jobs, 1));
      memmap_ = std::make_unique<sdk::CallMemmap>(s);
      static std::atomic<std::uint64_t> calls{0};
      serial_ = ++calls;
      initializer_ = s.initializer;
    } catch (...) {
      return std::current_exception();
    }
    return {};
  }
  void submit(joblib::Batch& batch) noexcept override {
    try {
      Engine::get().submit({&batch, memmap_.get(), initializer_, max_tasks_, memory_limit_, serial_, may_queue_, timed_});
    } catch (...) {
      batch.fail(std::current_exception());
    }
  }
  void abort() noexcept override { Engine::get().abort(serial_); }
  void stop_call() noexcept override {
    if (memmap_) memmap_->cleanup();
    Engine::get().forget(serial_.exchange(0));
  }
  ~MpiBackend() override { stop_call(); }

 private:
  std::unique_ptr<sdk::CallMemmap> memmap_;
  std::vector<std::byte> initializer_;
  std::uint64_t max_tasks_ = 0, memory_limit_ = 0;
  std::atomic<std::uint64_t> serial_{0};  // this call's number (0: no call); abort() may read it from any thread
  bool may_queue_ = false;
  bool timed_ = false;
};

}  // namespace

JOBLIB_EXPORT_BACKEND_FACTORY(MpiBackend::make)
JOBLIB_EXPORT_WORKER_TAKEOVER(takeover)
