// numpy's .npy files from C++: save an Array for numpy.load, load what
// numpy.save wrote, map a large file instead of reading it. Built and run as
// the ctest `docs.npy`; docs/python.md quotes it.
#include <joblib/joblib.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

int main() {
  int failures = 0;
  auto expect = [&](bool ok, const char* what) {
    if (!ok) {
      std::fprintf(stderr, "FAILED: %s\n", what);
      ++failures;
    }
  };
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("npy_example_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);

  // Save: numpy.load(path) gives a float64 array of shape (1000, 3).
  joblib::Array<double> points({1000, 3});
  for (std::size_t i = 0; i < points.size(); ++i) points[i] = 0.5 * double(i);
  joblib::save_npy(dir / "points.npy", points);

  // Load: the element type must be the file's dtype (float64 here).
  joblib::Array<double> again = joblib::load_npy<double>(dir / "points.npy");
  expect(again.shape() == points.shape() && again[2999] == 1499.5, "the values come back");

  // Map: the data stays in the file (page cache); nothing is read up front.
  joblib::Array<double> mapped = joblib::load_npy<double>(dir / "points.npy", {.mmap_mode = joblib::MmapMode::r});
  expect(mapped.is_mapped() && !mapped.is_writable() && mapped[7] == 3.5, "mapped, read-only");

  // Another dtype is refused, naming both.
  try {
    joblib::load_npy<float>(dir / "points.npy");
    expect(false, "float32 is not float64");
  } catch (const joblib::StoreError& e) {
    std::printf("%s\n", e.what());  // ...: the .npy file holds float64 ('<f8'), not float32
  }

  // .npz: several arrays of any dtypes in one archive (numpy.savez;
  // {.compress = true} is numpy.savez_compressed).
  joblib::Array<std::int32_t> labels({1000});
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = static_cast<std::int32_t>(i % 7);
  joblib::save_npz(dir / "set.npz", {{"points", points}, {"labels", labels}}, {.compress = true});
  const joblib::NpzFile set = joblib::load_npz(dir / "set.npz");  // numpy.load(path)["labels"] in Python
  expect(set.names() == std::vector<std::string>{"points", "labels"}, "the names, in order");
  expect(set.at<std::int32_t>("labels")[8] == 1 && set.dtype("points") == "float64", "the arrays come back");

  std::filesystem::remove_all(dir);
  if (failures == 0) std::printf("npy: all scenarios passed\n");
  return failures == 0 ? 0 : 1;
}
