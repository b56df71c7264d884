// cpu_count(): what this process may really use.
#include <joblib/config.hpp>

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

namespace joblib {
namespace {

int cgroup_cpu_limit() {
  // cgroup v2: "max 100000" or "<quota> <period>"
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string quota;
  long period = 0;
  if (v2 >> quota >> period) {
    if (quota != "max" && period > 0) return static_cast<int>(std::ceil(std::stod(quota) / period));
    return 0;
  }
  std::ifstream q("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), p("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  long qv = -1, pv = 0;
  if (q >> qv && p >> pv && qv > 0 && pv > 0) return static_cast<int>(std::ceil(double(qv) / pv));
  return 0;
}

int env_limit(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return 0;
  char* end = nullptr;
  long n = std::strtol(v, &end, 10);
  return (end && *end == '\0' && n > 0) ? static_cast<int>(n) : 0;
}

}  // namespace

int cpu_count() {
  int n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = std::min(n, std::max(1, CPU_COUNT(&set)));
  static const int cgroup = cgroup_cpu_limit();  // read once: a file read per Parallel call is too slow
  for (int limit : {cgroup, env_limit("JOBLIB_MAX_CPU_COUNT"), env_limit("LOKY_MAX_CPU_COUNT")})
    if (limit > 0) n = std::min(n, limit);
  return std::max(n, 1);
}

}  // namespace joblib
