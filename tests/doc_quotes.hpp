#pragma once
// A message a doc quotes must be the message the code prints: tests take the
// text the code produced, put the doc's example values in place of the
// run's (paths, pids, names), and check that docs/<name> quotes the result.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace joblib_test {

/// docs/<name>, from the source tree.
inline std::string read_doc(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path repo = fs::path(__FILE__).lexically_normal().parent_path().parent_path();
  std::ifstream in(repo / "docs" / name);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// `text` with every `from` replaced by `to`.
inline std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  if (from.empty()) return text;
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size()))
    text.replace(at, from.size(), to);
  return text;
}

/// Checks that docs/<doc> quotes `message` exactly.
inline void expect_doc_quotes(const std::string& doc, const std::string& message) {
  EXPECT_NE(read_doc(doc).find(message), std::string::npos) << "docs/" << doc << " should quote, exactly:\n"
                                                            << message;
}

}  // namespace joblib_test
