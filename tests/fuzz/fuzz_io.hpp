#pragma once
// The scratch file every fuzz input is written to: in
// $JOBLIB_FUZZ_SCRATCH_DIR (run_fuzz.sh gives its own temporary folder),
// else /dev/shm or /tmp. The targets remove it after every input, as
// libFuzzer may end the process without running atexit.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace joblib_fuzz {

inline const std::string& scratch_file(const char* target) {
  static const std::string path = [target] {
    std::string dir = std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp";
    if (const char* env = std::getenv("JOBLIB_FUZZ_SCRATCH_DIR")) dir = env;
    return dir + "/joblib_" + target + "_" + std::to_string(::getpid()) + ".bin";
  }();
  return path;
}

inline void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) std::abort();
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n <= 0) std::abort();
    data += n;
    size -= static_cast<std::size_t>(n);
  }
  ::close(fd);
}

}  // namespace joblib_fuzz
