// Scaling picture (issue 14, point 5): 1 ms CPU-bound tasks over 1..8
// workers on threading, tbb and loky, with the speedup and efficiency
// against one worker of the same backend; and the cost each backend adds
// per task against the task's duration (1 us .. 10 ms), so that a user sees
// where each one pays off. Writes docs/benchmarks_scaling.svg. The mpi
// backend runs under mpirun, one job per worker count: bench/run_mpi_bench.sh
// writes its figures to a file, which, given as the second argument, adds
// mpi to the plot.
//
//   ./build/bench/bin/bench_scaling [docs/benchmarks_scaling.svg [build/bench/mpi_scaling.txt]]
#include <joblib/joblib.hpp>

#include "spin.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <ranges>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

using bench::spin;

// Best of `reps` wall times of n tasks of `us` microseconds.
double run(const std::string& backend, int workers, int n, int us, int reps = 3) {
  double best = 1e99;
  joblib::Parallel p({.n_jobs = workers, .backend = backend});
  (void)std::vector<double>(p.map(spin, std::vector<int>(std::size_t(workers), 1)));  // warm: workers started
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    std::vector<double> out = p.map(spin, std::vector<int>(std::size_t(n), us));
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

const char* const kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> backends = {"threading", "tbb", "loky"};
  const int cores = joblib::cpu_count();
  std::printf("CPUs: %d\n\n1 ms tasks, 400 per call: wall time, speedup over 1 worker, efficiency (speedup / min(workers, CPUs))\n",
              cores);
  std::map<std::string, std::vector<double>> speedup;
  for (const auto& b : backends) {
    const double t1 = run(b, 1, 400, 1000);
    for (int w = 1; w <= 8; ++w) {
      const double t = w == 1 ? t1 : run(b, w, 400, 1000);
      const double s = t1 / t;
      speedup[b].push_back(s);
      std::printf("%-10s workers %d: %7.1f ms  speedup %.2f  efficiency %.2f\n", b.c_str(), w, t * 1e3, s,
                  s / std::min(w, cores));
    }
  }
  std::printf("\nper-task cost added by the backend (2 workers): (wall - n * duration / 2) / n\n");
  const std::vector<int> durations = {1, 10, 100, 1000, 10000};
  std::map<std::string, std::vector<double>> cost;
  for (const auto& b : backends)
    for (int us : durations) {
      const int n = std::clamp(400000 / us, 40, 20000);
      const double t = run(b, 2, n, us);
      const double per = std::max(0.0, (t - double(n) * us * 1e-6 / 2) / n) * 1e6;
      cost[b].push_back(per);
      std::printf("%-10s task %6d us: %9.2f us per task (%.0f%% of the task)\n", b.c_str(), us, per, 100 * per / us);
    }

  // The mpi figures of bench/run_mpi_bench.sh: "mpi_scaling <workers> <s>", "mpi_cost <us> <us>".
  std::vector<std::string> plotted = backends;
  if (argc > 2) {
    std::ifstream in(argv[2]);
    std::map<int, double> wall;
    std::map<int, double> added;
    for (std::string key; in >> key;) {
      double a = 0, b = 0;
      in >> a >> b;
      if (key == "mpi_scaling") wall[int(a)] = b;
      if (key == "mpi_cost") added[int(a)] = b;
    }
    bool whole = wall.count(1) > 0;
    for (int w = 1; w <= 8; ++w) whole = whole && wall.count(w);
    for (int us : durations) whole = whole && added.count(us);
    if (!whole) {
      std::fprintf(stderr, "%s: no complete mpi figures (run bench/run_mpi_bench.sh first)\n", argv[2]);
      return 1;
    }
    std::printf("\nmpi (from %s)\n", argv[2]);
    for (int w = 1; w <= 8; ++w) {
      const double s = wall[1] / wall[w];
      speedup["mpi"].push_back(s);
      std::printf("%-10s workers %d: %7.1f ms  speedup %.2f  efficiency %.2f\n", "mpi", w, wall[w] * 1e3, s,
                  s / std::min(w, cores));
    }
    for (int us : durations) {
      cost["mpi"].push_back(added[us]);
      std::printf("%-10s task %6d us: %9.2f us per task (%.0f%% of the task)\n", "mpi", us, added[us],
                  100 * added[us] / us);
    }
    plotted.push_back("mpi");
  }

  // Two panels: speedup against workers, per-task cost against duration.
  const std::string path = argc > 1 ? argv[1] : "benchmarks_scaling.svg";
  std::ofstream svg(path);
  const int w = 820, h = 340, pw = 340, ph = 240, top = 50;
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  auto panel = [&](int left, const std::string& title, const std::string& xlabel, const std::string& ylabel) {
    svg << "<text x='" << left + pw / 2 << "' y='20' text-anchor='middle' font-size='14'>" << title << "</text>\n"
        << "<rect x='" << left << "' y='" << top << "' width='" << pw << "' height='" << ph
        << "' fill='none' stroke='#888'/>\n<text x='" << left + pw / 2 << "' y='" << top + ph + 34
        << "' text-anchor='middle'>" << xlabel << "</text>\n<text x='" << left - 40 << "' y='" << top + ph / 2
        << "' text-anchor='middle' transform='rotate(-90 " << left - 40 << ' ' << top + ph / 2 << ")'>" << ylabel
        << "</text>\n";
  };
  // Left: speedup 0..(cores + 1) against workers 1..8.
  const int l1 = 70;
  panel(l1, "1 ms tasks: speedup over 1 worker", "workers", "speedup");
  const double smax = cores + 1.0;
  for (int k = 0; k <= int(smax); ++k) {
    const double y = top + ph - ph * k / smax;
    svg << "<text x='" << l1 - 6 << "' y='" << y + 4 << "' text-anchor='end'>" << k << "</text>\n";
  }
  for (int x = 1; x <= 8; ++x)
    svg << "<text x='" << l1 + pw * (x - 1) / 7.0 << "' y='" << top + ph + 16 << "' text-anchor='middle'>" << x
        << "</text>\n";
  for (std::size_t i = 0; i < plotted.size(); ++i) {
    svg << "<polyline fill='none' stroke='" << kColors[i] << "' stroke-width='2' points='";
    for (int x = 1; x <= 8; ++x)
      svg << l1 + pw * (x - 1) / 7.0 << ',' << top + ph - ph * std::min(speedup[plotted[i]][std::size_t(x - 1)], smax) / smax
          << ' ';
    svg << "'/>\n<text x='" << l1 + 10 << "' y='" << top + 16 + 16 * int(i) << "' fill='" << kColors[i] << "'>"
        << plotted[i] << "</text>\n";
  }
  // Right: log10(per-task cost in us) against log10(duration in us).
  const int l2 = 460;
  panel(l2, "cost added per task, 2 workers", "task duration (us, log)", "us per task (log)");
  const double ymin = -2, ymax = 4;
  auto ly = [&](double us) { return top + ph - ph * (std::clamp(std::log10(std::max(us, 1e-2)), ymin, ymax) - ymin) / (ymax - ymin); };
  for (int k = int(ymin); k <= int(ymax); ++k)
    svg << "<text x='" << l2 - 6 << "' y='" << ly(std::pow(10.0, k)) + 4 << "' text-anchor='end'>1e" << k << "</text>\n";
  for (std::size_t j = 0; j < durations.size(); ++j)
    svg << "<text x='" << l2 + pw * double(j) / 4 << "' y='" << top + ph + 16 << "' text-anchor='middle'>"
        << durations[j] << "</text>\n";
  for (std::size_t i = 0; i < plotted.size(); ++i) {
    svg << "<polyline fill='none' stroke='" << kColors[i] << "' stroke-width='2' points='";
    for (std::size_t j = 0; j < durations.size(); ++j) svg << l2 + pw * double(j) / 4 << ',' << ly(cost[plotted[i]][j]) << ' ';
    svg << "'/>\n";
  }
  svg << "</svg>\n";
  std::printf("\nwrote %s\n", path.c_str());
}
