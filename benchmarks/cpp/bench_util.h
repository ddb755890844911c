// Shared by the C++ benchmarks (bench_step, bench_plan): option parsing, timing of single
// calls and the percentiles they print.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace mbpo_fast::bench {

// The q-quantile of v (nearest rank, rounded), q in [0, 1]; v is taken by value (partly sorted).
inline double percentile(std::vector<double> v, double q) {
  const size_t k = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

// `value` as an integer >= 1; std::invalid_argument naming the option `name` otherwise.
inline int64_t positive(const std::string& name, const std::string& value) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value.size() || v < 1)
    throw std::invalid_argument(name + ": expected an integer >= 1, got '" + value + "'");
  return v;
}

// Walks the "--option value" pairs of argv[first..argc): --reps and --warmup (integers >= 1, every
// benchmark has them) set `reps` and `warmup`; any other option goes to on_option(option, value),
// which returns false for one it does not know (then std::invalid_argument "unknown option").
template <class OnOption>
void parse_options(int argc, char** argv, int first, int64_t& reps, int64_t& warmup, OnOption&& on_option) {
  for (int i = first; i < argc; i += 2) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(arg + ": expected a value after it");
    const std::string value = argv[i + 1];
    if (arg == "--reps") {
      reps = positive(arg, value);
    } else if (arg == "--warmup") {
      warmup = positive(arg, value);
    } else if (!on_option(arg, value)) {
      throw std::invalid_argument("unknown option " + arg);
    }
  }
}

// `warmup` untimed calls, then `reps` calls each timed alone with steady_clock (nothing else runs
// between the two clock reads); prepare() runs untimed before every call. Returns the times in
// the unit of Ratio (e.g. std::micro, std::milli).
template <class Ratio, class Prepare, class Call>
std::vector<double> time_calls(int64_t warmup, int64_t reps, Prepare&& prepare, Call&& call) {
  for (int64_t r = 0; r < warmup; ++r) {
    prepare();
    call();
  }
  std::vector<double> times(static_cast<size_t>(reps));
  for (int64_t r = 0; r < reps; ++r) {
    prepare();
    const auto t0 = std::chrono::steady_clock::now();
    call();
    const auto t1 = std::chrono::steady_clock::now();
    times[static_cast<size_t>(r)] = std::chrono::duration<double, Ratio>(t1 - t0).count();
  }
  return times;
}

// The numbers every benchmark prints: median, p10, p90 and min of `times`.
struct Summary {
  double median, p10, p90, min;
};

inline Summary summarize(const std::vector<double>& times) {
  return {percentile(times, 0.5), percentile(times, 0.1), percentile(times, 0.9),
          *std::min_element(times.begin(), times.end())};
}

}  // namespace mbpo_fast::bench
