// joblib's return_as="generator" memory example (reference/002), in C++:
// 150 tasks of 0.1 s, each returning 10000 x 200 doubles (16 MB), on 2
// threads, reduced by a running sum. Peak RSS growth is measured for
// return_as=list, for a generator with a fast consumer, and for a generator
// whose consumer is slower than the workers. The bound checked is
// (pre_dispatch + n_jobs + 1) x the result size.
//
//   ./build/bench/bin/bench_memory_example [docs/memory_example.svg]
#include <joblib/joblib.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <ranges>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
constexpr std::size_t kRows = 10000, kCols = 200;
constexpr double kResultBytes = double(kRows * kCols * sizeof(double));
constexpr int kTasks = 150;

std::vector<double> return_big_object(int i) {
  std::this_thread::sleep_for(100ms);
  return std::vector<double>(kRows * kCols, double(i));
}

long rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  long size = 0, resident = 0;
  statm >> size >> resident;
  return resident * sysconf(_SC_PAGESIZE);
}

// Samples RSS growth every 10 ms in a thread, like joblib's MemoryMonitor.
class MemoryMonitor {
 public:
  MemoryMonitor() : base_(rss_bytes()), thread_([this] { run(); }) {}
  ~MemoryMonitor() { stop(); }
  void stop() {
    if (!stop_.exchange(true)) thread_.join();
  }
  std::vector<double> samples() {
    std::lock_guard lock(m_);
    return samples_;
  }
  double peak() {
    auto s = samples();
    return s.empty() ? 0.0 : *std::max_element(s.begin(), s.end());
  }

 private:
  void run() {
    while (!stop_) {
      {
        std::lock_guard lock(m_);
        samples_.push_back(double(rss_bytes() - base_));
      }
      std::this_thread::sleep_for(10ms);
    }
  }
  long base_;
  std::atomic<bool> stop_{false};
  std::mutex m_;
  std::vector<double> samples_;
  std::thread thread_;
};

template <class Results>
std::vector<double> accumulator_sum(Results&& results, std::chrono::milliseconds delay) {
  std::vector<double> sum(kRows * kCols, 0.0);
  for (auto& value : results) {
    for (std::size_t k = 0; k < sum.size(); ++k) sum[k] += value[k];
    if (delay.count()) std::this_thread::sleep_for(delay);
  }
  return sum;
}

struct Run {
  std::string label;
  double peak_mb;
  double seconds;
  std::vector<double> samples;
};

Run measure(const std::string& label, joblib::ReturnAs mode, std::chrono::milliseconds consumer_delay) {
  auto t0 = std::chrono::steady_clock::now();
  MemoryMonitor monitor;
  {
    auto results = joblib::Parallel({.n_jobs = 2, .return_as = mode})
                       .map(return_big_object, std::views::iota(0, kTasks));
    auto sum = accumulator_sum(results, consumer_delay);
    if (sum[0] != double(kTasks * (kTasks - 1) / 2)) std::fprintf(stderr, "wrong sum\n");
  }
  monitor.stop();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto samples = monitor.samples();
  return {label, monitor.peak() / 1e6, secs, samples};
}

void write_svg(const std::string& path, const std::vector<Run>& runs) {
  const double w = 640, h = 360, left = 70, bottom = 40;
  double ymax = 1;
  std::size_t xmax = 1;
  for (auto& r : runs) {
    for (double v : r.samples) ymax = std::max(ymax, v / 1e6);
    xmax = std::max(xmax, r.samples.size());
  }
  const char* colors[] = {"#d62728", "#1f77b4", "#2ca02c"};
  std::ofstream svg(path);
  svg << "<svg xmlns='http://www.w3.org/2000/svg' width='" << w << "' height='" << h << "' font-family='sans-serif' font-size='12'>\n"
      << "<rect width='100%' height='100%' fill='white'/>\n"
      << "<text x='" << w / 2 << "' y='18' text-anchor='middle'>joblib-cpp: peak RSS growth (running max), 150 tasks x 16 MB, n_jobs=2</text>\n"
      << "<line x1='" << left << "' y1='" << h - bottom << "' x2='" << w - 10 << "' y2='" << h - bottom << "' stroke='black'/>\n"
      << "<line x1='" << left << "' y1='30' x2='" << left << "' y2='" << h - bottom << "' stroke='black'/>\n"
      << "<text x='" << w / 2 << "' y='" << h - 8 << "' text-anchor='middle'>time (10 ms samples)</text>\n";
  for (int k = 0; k <= 4; ++k) {
    double v = ymax * k / 4;
    double y = (h - bottom) - (h - bottom - 30) * k / 4;
    svg << "<text x='" << left - 6 << "' y='" << y + 4 << "' text-anchor='end'>" << int(v) << " MB</text>\n";
  }
  for (std::size_t i = 0; i < runs.size(); ++i) {
    svg << "<polyline fill='none' stroke='" << colors[i % 3] << "' stroke-width='2' points='";
    double running = 0;
    for (std::size_t j = 0; j < runs[i].samples.size(); ++j) {
      running = std::max(running, runs[i].samples[j] / 1e6);
      double x = left + (w - 10 - left) * double(j) / double(xmax);
      double y = (h - bottom) - (h - bottom - 30) * running / ymax;
      svg << x << ',' << y << ' ';
    }
    svg << "'/>\n<text x='" << left + 10 << "' y='" << 40 + 16 * i << "' fill='" << colors[i % 3] << "'>"
        << runs[i].label << ": peak " << int(runs[i].peak_mb) << " MB</text>\n";
  }
  svg << "</svg>\n";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Run> runs;
  runs.push_back(measure("return_as=list", joblib::ReturnAs::list, 0ms));
  runs.push_back(measure("return_as=generator, fast consumer", joblib::ReturnAs::generator, 0ms));
  runs.push_back(measure("return_as=generator, slow consumer (0.1 s/result)", joblib::ReturnAs::generator, 100ms));
  const double bound = (4 + 2 + 1) * kResultBytes / 1e6;
  std::printf("%-52s %10s %8s\n", "mode", "peak MB", "seconds");
  for (auto& r : runs) std::printf("%-52s %10.1f %8.2f\n", r.label.c_str(), r.peak_mb, r.seconds);
  std::printf("bound (pre_dispatch + n_jobs + 1) x %.0f MB = %.0f MB: generator runs %s\n", kResultBytes / 1e6, bound,
              runs[1].peak_mb < bound && runs[2].peak_mb < bound ? "within" : "OVER");
  write_svg(argc > 1 ? argv[1] : "memory_example.svg", runs);
  return 0;
}
