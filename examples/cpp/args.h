// Command-line integers for the examples: the one parser behind their --steps/--seed/... options.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace example {

// `value` (the argument of option `arg`) as an integer >= min; std::invalid_argument naming the
// option otherwise (not a whole integer, out of range, or below min).
inline int64_t count(const std::string& arg, const std::string& value, int64_t min) {
  size_t used = 0;
  int64_t v = -1;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || v < min) {
    throw std::invalid_argument(arg + ": expected an integer >= " + std::to_string(min) + ", got '" +
                                value + "'");
  }
  return v;
}

}  // namespace example
