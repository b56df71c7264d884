#include "config.hpp"

#include "expr.hpp"
#include "registry.hpp"

#include <joblib/config.hpp>
#include <joblib/errors.hpp>

#include <fmt/format.h>

#include <dlfcn.h>

#include <cctype>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <vector>

namespace joblib::detail {
namespace {

thread_local std::vector<Frame> t_frames;
thread_local const std::atomic<bool>* t_stop = nullptr;

const char* prefer_name(Prefer p) {
  switch (p) {
    case Prefer::processes: return "processes";
    case Prefer::threads: return "threads";
    default: return "None";
  }
}

void check_n_jobs(int n) {
  if (n == 0) throw std::invalid_argument("n_jobs == 0 in Parallel has no meaning");
}

}  // namespace

const Frame& current_frame() {
  static const Frame empty;
  return t_frames.empty() ? empty : t_frames.back();
}

std::string backend_class_name(const std::string& name) {
  std::string out;
  bool up = true;
  for (char c : name) {
    if (c == '_' || c == '-') {
      up = true;
      continue;
    }
    out += up ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    up = false;
  }
  return out + "Backend";
}

int resolve_n_jobs(int n) {
  check_n_jobs(n);
  if (n < 0) return std::max(cpu_count() + 1 + n, 1);
  return n;
}

OmpHooks OmpHooks::find() {
  // Found once for good; while OpenMP is not loaded, looked for again at most
  // once a second (dlsym is too slow for every call).
  static std::atomic<void (*)(int)> set{nullptr};
  static std::atomic<int (*)()> get{nullptr};
  static std::atomic<std::int64_t> last_miss{0};
  if (!set.load(std::memory_order_acquire)) {
    const std::int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    const std::int64_t prev = last_miss.load(std::memory_order_relaxed);
    if (prev == 0 || now - prev > 1'000'000'000) {
      auto s = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
      auto g = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
      if (s && g) {
        get.store(g, std::memory_order_release);
        set.store(s, std::memory_order_release);
      } else {
        last_miss.store(now, std::memory_order_relaxed);
      }
    }
  }
  OmpHooks h;
  h.set_num_threads = set.load(std::memory_order_acquire);
  h.get_max_threads = get.load(std::memory_order_acquire);
  if (!h.set_num_threads || !h.get_max_threads) h = OmpHooks{};
  return h;
}

TaskScope::TaskScope(const NestedBackend& nested, int nesting_level, const std::atomic<bool>* stop,
                     int inner_threads, const OmpHooks& omp)
    : saved_stop_(t_stop) {
  // The frame is made in place (a task's scope is made for every batch).
  if (t_frames.empty())
    t_frames.emplace_back();
  else
    t_frames.push_back(t_frames.back());
  Frame& f = t_frames.back();
  try {
    f.backend = nested.name;
  } catch (...) {  // out of memory: no frame is left behind
    t_frames.pop_back();
    throw;
  }
  f.n_jobs = nested.n_jobs.value_or(1);
  f.nesting_level = nesting_level;
  t_stop = stop;
  if (inner_threads > 0 && omp.set_num_threads) {
    omp_ = &omp;
    saved_omp_threads_ = omp.get_max_threads();
    omp.set_num_threads(inner_threads);
  }
}

StopFlagScope::StopFlagScope(const std::atomic<bool>* stop) noexcept : saved_(t_stop) { t_stop = stop; }
StopFlagScope::~StopFlagScope() { t_stop = saved_; }

TaskScope::~TaskScope() {
  if (omp_) omp_->set_num_threads(saved_omp_threads_);
  t_frames.pop_back();
  t_stop = saved_stop_;
}

Resolved resolve(const ParallelOptions& o) {
  const Frame& f = current_frame();
  Resolved r;
  // An explicit value always wins; an unset one takes the scope's, then the default.
  const Prefer prefer = o.prefer ? *o.prefer : f.prefer.value_or(Prefer::none);
  const Require require = o.require ? *o.require : f.require.value_or(Require::none);
  r.verbose = o.verbose ? *o.verbose : f.verbose.value_or(0);
  if (prefer == Prefer::processes && require == Require::sharedmem)
    throw std::invalid_argument("prefer == 'processes' and require == 'sharedmem' are inconsistent settings");

  bool explicit_backend = false;
  std::string name;
  if (!o.backend.empty()) {
    name = o.backend;
    explicit_backend = true;
    if (!backend_known(name)) throw_unknown_backend(name);
  } else if (f.backend) {
    name = *f.backend;
  } else if (prefer == Prefer::threads) {
    name = default_backend_for(Hint::threads);
  } else if (prefer == Prefer::processes) {
    name = default_backend_for(Hint::processes);
    if (!backend_known(name)) {
      std::string fallback = default_backend();
      std::fprintf(stderr, "UserWarning: joblib backend '%s' is not available on your system, falling back to %s.\n",
                   name.c_str(), fallback.c_str());
      name = fallback;
    }
  } else {
    name = default_backend();
  }
  if (!backend_known(name)) {
    if (explicit_backend || f.backend) throw_unknown_backend(name);
    throw_default_backend_unavailable(name);  // nobody named a backend: say so
  }

  if (require == Require::sharedmem && !backend_serves(name, Hint::sharedmem)) {
    if (explicit_backend) throw std::invalid_argument(fmt::format("Backend {} does not support shared memory", name));
    const std::string thread_backend = default_backend_for(Hint::sharedmem);
    if (r.verbose >= 10)
      std::printf("Using %s as joblib backend instead of %s as the latter does not provide shared memory semantics.\n",
                  backend_class_name(thread_backend).c_str(), backend_class_name(name).c_str());
    name = thread_backend;
  }

  // n_jobs: explicit > scope > 1. The scope's n_jobs is kept when a hint or
  // require=sharedmem substitutes a thread backend (a deliberate departure
  // from joblib, which resets it to 1: see docs/backends.md).
  int requested = 1;
  if (o.n_jobs) requested = *o.n_jobs;
  else if (f.n_jobs) requested = *f.n_jobs;
  r.requested_n_jobs = std::to_string(requested);
  int n = resolve_n_jobs(requested);
  if (name == "sequential") n = 1;

  r.nesting_level = f.nesting_level;
  r.timeout = o.timeout;
  r.pre_dispatch = o.pre_dispatch;
  r.batch_size = o.batch_size;
  r.temp_folder = o.temp_folder && !o.temp_folder->empty() ? *o.temp_folder : f.temp_folder.value_or("");
  if (o.max_nbytes) r.max_nbytes = *o.max_nbytes ? parse_bytes(**o.max_nbytes, "max_nbytes") : std::nullopt;
  else r.max_nbytes = parse_bytes(f.max_nbytes.value_or("1M"), "max_nbytes");
  r.mmap_mode = o.mmap_mode ? *o.mmap_mode : f.mmap_mode.value_or(MmapMode::r);
  r.return_as = o.return_as;
  r.on_progress = o.on_progress;
  r.initializer = o.initializer ? o.initializer.request : f.initializer.request;
  r.progress_bar = o.progress_bar;
  r.retries = o.retries;
  r.retry_if = o.retry_if;
  r.max_tasks_per_child = o.max_tasks_per_child;
  if (o.worker_memory_limit) r.worker_memory_limit = parse_bytes(*o.worker_memory_limit, "worker_memory_limit");
  r.stop_token = o.stop_token;

  // A negative n_jobs ("all") also asks the backend when it resolves to one
  // CPU here: the backend's workers may be elsewhere (the ranks of an MPI job).
  if (n > 1 || (requested < 0 && name != "sequential")) {
    BackendInit init;
    init.nesting_level = f.nesting_level;
    init.inner_max_num_threads = f.inner_max_num_threads;
    init.settings = f.settings;
    r.backend = create_backend(name, init);
    r.caps = r.backend->capabilities();
    n = r.backend->effective_n_jobs(n);
    if (n <= 1) {
      r.backend.reset();
      n = 1;
    }
  }
  if (r.backend) {
    r.backend_name = name;
    try {
      r.nested = r.backend->nested_backend();
    } catch (const std::exception& e) {
      throw BackendError(fmt::format("backend '{}': nested_backend() failed: {}", name, e.what()));
    }
    if (r.return_as != ReturnAs::list && !r.caps.supports_return_generator)
      throw std::invalid_argument(fmt::format("Backend {} does not support return_as={}", name,
                                              r.return_as == ReturnAs::generator ? "generator" : "generator_unordered"));
  } else {
    r.backend_name = "sequential";
    r.caps.uses_threads = true;
    r.caps.supports_sharedmem = true;
    r.caps.supports_timeout = false;
  }
  r.n_jobs = n;
  if (r.backend && r.caps.uses_threads) {
    // Tasks that open OpenMP regions on n_jobs threads at once must not
    // oversubscribe the machine: cap them as joblib caps loky workers.
    r.inner_threads = f.inner_max_num_threads.value_or(std::max(cpu_count() / n, 1));
    r.omp = OmpHooks::find();
  }
  (void)prefer_name;
  return r;
}

}  // namespace joblib::detail

namespace joblib {

parallel_config::parallel_config(ConfigOptions o) {
  using namespace detail;
  if (o.backend) {
    if (!backend_known(*o.backend)) throw_unknown_backend(*o.backend);
  } else if (!o.settings.empty() || o.inner_max_num_threads) {
    throw std::invalid_argument(
        "inner_max_num_threads and other constructor parameters backend_params are only supported when backend is "
        "not None.");
  }
  if (o.n_jobs && *o.n_jobs == 0) throw std::invalid_argument("n_jobs == 0 in Parallel has no meaning");
  if (o.inner_max_num_threads && *o.inner_max_num_threads < 1)
    throw std::invalid_argument(fmt::format("inner_max_num_threads must be at least 1, got {}", *o.inner_max_num_threads));
  if (o.verbose && *o.verbose < 0) throw std::invalid_argument(fmt::format("verbose must be >= 0, got {}", *o.verbose));
  if (o.max_nbytes) (void)parse_bytes(*o.max_nbytes, "max_nbytes");
  Frame f = current_frame();
  const Prefer prefer = o.prefer ? *o.prefer : f.prefer.value_or(Prefer::none);
  const Require require = o.require ? *o.require : f.require.value_or(Require::none);
  if (prefer == Prefer::processes && require == Require::sharedmem)
    throw std::invalid_argument("prefer == 'processes' and require == 'sharedmem' are inconsistent settings");
  if (o.backend) {
    // A new backend starts from its own settings, not the enclosing backend's.
    f.backend = o.backend;
    f.settings = o.settings;
    f.inner_max_num_threads = o.inner_max_num_threads;
  }
  if (o.n_jobs) f.n_jobs = o.n_jobs;
  if (o.verbose) f.verbose = o.verbose;
  if (o.temp_folder) f.temp_folder = o.temp_folder;
  if (o.max_nbytes) f.max_nbytes = o.max_nbytes;
  if (o.mmap_mode) f.mmap_mode = o.mmap_mode;
  if (o.prefer) f.prefer = o.prefer;
  if (o.require) f.require = o.require;
  if (o.initializer) f.initializer = o.initializer;
  t_frames.push_back(std::move(f));
  depth_ = t_frames.size();
}

parallel_config::~parallel_config() {
  if (detail::t_frames.size() >= depth_) detail::t_frames.resize(depth_ - 1);
}

parallel_backend::parallel_backend(std::string backend, BackendOptions options)
    : scope_(ConfigOptions{.backend = std::move(backend),
                           .n_jobs = options.n_jobs.value_or(-1),
                           .inner_max_num_threads = options.inner_max_num_threads,
                           .settings = std::move(options.settings)}) {}

int effective_n_jobs(std::optional<int> n_jobs) {
  if (n_jobs && *n_jobs == 1) return 1;
  const detail::Frame& f = detail::current_frame();
  if (!n_jobs) n_jobs = f.n_jobs;
  if (!n_jobs) return 1;
  int n = detail::resolve_n_jobs(*n_jobs);
  if (f.backend && *f.backend == "sequential") return 1;
  return n;
}

int nesting_level() noexcept { return detail::current_frame().nesting_level; }

bool stop_requested() noexcept { return detail::t_stop && detail::t_stop->load(std::memory_order_relaxed); }

}  // namespace joblib
