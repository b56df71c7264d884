// Train in Python, run in C++: load a model that Python's joblib.dump wrote
// (a dict of parameters and numpy arrays), predict, and write the
// predictions back for Python. Built and run as the ctest
// `docs.python_model` (after python_model.py train; python_model.py check
// reads the result); docs/python.md quotes it.
#include <joblib/joblib.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR (python_model.py train DIR writes DIR/model.joblib)\n", argv[0]);
    return 2;
  }
  const std::filesystem::path dir = argv[1];

  // Read: no Python, no code run; the weights are a typed Array.
  const joblib::PyValue model = joblib::load_python(dir / "model.joblib");
  const double alpha = model["params"]["alpha"].as<double>();
  const joblib::Array<float> w = model["weights"].as<joblib::Array<float>>();
  const double bias = model["bias"].as<double>();
  const joblib::Array<double> x = model["X_new"].as<joblib::Array<double>>();  // shape (5, 3)
  const joblib::Array<double> expected = model["expected"].as<joblib::Array<double>>();
  std::printf("alpha = %g, %zu weights, features %s\n", alpha, w.size(), model["features"].repr().c_str());

  // Predict in C++.
  const std::size_t n = x.shape()[0], k = x.shape()[1];
  joblib::Array<double> predictions({n});
  for (std::size_t i = 0; i < n; ++i) {
    double y = bias;
    for (std::size_t j = 0; j < k; ++j) y += x[i * k + j] * double(w[j]);
    predictions[i] = y;
    if (std::abs(y - expected[i]) > 1e-5) {
      std::fprintf(stderr, "FAILED: prediction %zu is %g, Python says %g\n", i, y, expected[i]);
      return 1;
    }
  }

  // Write back: Python's joblib.load reads it.
  joblib::dump_python(std::map<std::string, joblib::PyValue>{{"model", "ridge"},
                                                             {"n", static_cast<int>(n)},
                                                             {"predictions", predictions}},
                      dir / "predictions.joblib");
  std::printf("python_model: C++ predicted what Python did\n");
  return 0;
}
