#pragma once
// What the interop tests (.npy, .npz, Python joblib files) share: Debian's
// interpreter, a script runner and a temporary folder.
#include <unistd.h>

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

}  // namespace joblib_test
