// Linked into every executable that links joblib::joblib (with
// -Wl,--wrap=main): a worker process of the loky backend takes over here,
// after every global of the program is initialised and before main() runs.
#include <joblib/worker.hpp>

extern "C" int __real_main(int argc, char** argv, char** envp);

extern "C" int __wrap_main(int argc, char** argv, char** envp) {
  joblib::worker_main_guard(argc, argv);
  return __real_main(argc, argv, envp);
}
