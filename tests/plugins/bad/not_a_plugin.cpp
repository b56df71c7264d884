// A shared object that is not a joblib-cpp plugin at all.
extern "C" __attribute__((visibility("default"))) int some_function() { return 42; }
