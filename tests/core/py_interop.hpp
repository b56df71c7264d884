#pragma once
// What the interop tests (.npy, .npz, Python joblib files) share: Debian's
// interpreter, a script runner and a temporary folder.
#include <joblib/array.hpp>
#include <joblib/errors.hpp>

#include <gtest/gtest.h>
#include <unistd.h>

#include <complex>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

namespace joblib_test {

namespace fs = std::filesystem;

// Debian's interpreter (the one python3-numpy and python3-joblib install
// into), whatever python3 comes first on PATH.
inline std::string python() { return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3"; }

// True when `module` imports.
inline bool have_module(const std::string& module) {
  return std::system((python() + " -c 'import " + module + "' 2>/dev/null").c_str()) == 0;
}
inline bool have_numpy() {
  static const bool yes = have_module("numpy");
  return yes;
}
inline bool have_joblib() {
  static const bool yes = have_module("joblib") && have_numpy();
  return yes;
}

// Runs a Python script in `dir`; true when it exits 0.
inline bool run_python(const std::string& script, const fs::path& dir) {
  const fs::path file = dir / "script.py";
  std::ofstream(file) << script;
  return std::system((python() + " " + file.string()).c_str()) == 0;
}

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& prefix = "joblib_interop") {
    static int n = 0;
    path = fs::temp_directory_path() / (prefix + "_" + std::to_string(::getpid()) + "_" + std::to_string(++n));
    fs::create_directories(path);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() { fs::remove_all(path); }
};

inline void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary) << bytes;
}

// The what() of the StoreError `f` throws ("no StoreError" when none).
template <class F>
std::string store_error(F&& f) {
  try {
    f();
  } catch (const joblib::StoreError& e) {
    return e.what();
  }
  return "no StoreError";
}

// The values the Python writers of these tests give every dtype, from
// base = np.arange(24).reshape(2, 3, 4): b1 base % 2 == 1, signed ints
// base * 3 - 5, unsigned base * 3, floats base * 0.5 - 2, complexes
// base + 1j * (base - 1); checked in C order.
template <class T>
void expect_numpy_values(const joblib::Array<T>& a, const std::string& what) {
  ASSERT_EQ(a.shape(), (std::vector<std::size_t>{2, 3, 4})) << what;
  for (std::size_t i = 0; i < 24; ++i) {
    const auto b = static_cast<long long>(i);
    if constexpr (std::is_same_v<T, bool>) {
      EXPECT_EQ(a[i], b % 2 == 1) << what << " " << i;
    } else if constexpr (std::is_same_v<T, std::complex<float>> || std::is_same_v<T, std::complex<double>>) {
      EXPECT_EQ(a[i], T(double(b), double(b - 1))) << what << " " << i;
    } else if constexpr (std::is_floating_point_v<T>) {
      EXPECT_EQ(a[i], T(double(b) * 0.5 - 2)) << what << " " << i;
    } else if constexpr (std::is_signed_v<T>) {
      EXPECT_EQ(static_cast<long long>(a[i]), static_cast<long long>(static_cast<T>(b * 3 - 5))) << what << " " << i;
    } else {
      EXPECT_EQ(static_cast<unsigned long long>(a[i]), static_cast<unsigned long long>(static_cast<T>(b * 3))) << what;
    }
  }
}

}  // namespace joblib_test
