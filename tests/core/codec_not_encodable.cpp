// Compiled by the ctest store.not_encodable_is_a_compile_error: dumping a
// type the codec cannot encode must stop the build with joblib's message.
// With -DJOBLIB_ENCODABLE_CONTROL the same calls on an encodable type must
// compile (store.encodable_control_compiles), so the test cannot pass by
// failing for another reason.
#include <joblib/persistence.hpp>

#include <string>

// A class with a constructor (not an aggregate) and no cereal function.
class NoSerialize {
 public:
  NoSerialize() = default;
  explicit NoSerialize(int v) : x_(v) {}

 private:
  int x_ = 0;
  std::string s_;
};

#ifdef JOBLIB_ENCODABLE_CONTROL
using Value = std::pair<int, std::string>;
#else
using Value = NoSerialize;
#endif

int main() {
  joblib::dump(Value{}, "never-written.joblib");
  Value v = joblib::load<Value>("never-read.joblib");
  (void)v;
}
