#pragma once
// Parsing of joblib's small string options: pre_dispatch expressions and
// "1M"-style sizes.
#include <joblib/export.hpp>

#include <cstddef>
#include <optional>
#include <string>

namespace joblib::detail {

/// Evaluates joblib's pre_dispatch expression with `n_jobs` substituted:
/// numbers, + - * / // % ** and unary minus, parentheses; at most 30
/// characters; every value within 1e6. Returns the value truncated to an
/// integer. Throws std::invalid_argument with joblib's messages.
JOBLIB_EXPORT long eval_pre_dispatch(const std::string& expression, int n_jobs);

/// Parses a size such as "1M", "500K", "2G" (powers of 1024) or a plain byte
/// count; "none" gives nullopt. Throws std::invalid_argument naming `field`.
JOBLIB_EXPORT std::optional<std::size_t> parse_bytes(const std::string& text, const char* field);

}  // namespace joblib::detail
