// A tiny self-contained test harness for the C++ core (no third-party framework).
//   TEST_CASE(name) { CHECK(cond); CHECK_THROWS(expr); CHECK_NEAR(a, b, tol); }
//   int main() { return mbpo_fast_test::run_all(); }   // or include with MBPO_TEST_MAIN
#pragma once

#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace mbpo_fast_test {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}

inline int& failures() {
  static int count = 0;
  return count;
}

struct Registrar {
  Registrar(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::fprintf(stderr, "  FAILED %s:%d: %s\n", file, line, what.c_str());
}

inline int run_all() {
  int failed_cases = 0;
  for (const auto& c : registry()) {
    const int before = failures();
    try {
      c.fn();
    } catch (const std::exception& e) {
      fail(__FILE__, __LINE__, std::string("unexpected exception: ") + e.what());
    }
    const bool ok = failures() == before;
    failed_cases += ok ? 0 : 1;
    std::printf("[%s] %s\n", ok ? "  OK  " : "FAILED", c.name);
  }
  const int total = static_cast<int>(registry().size());
  std::printf("%d passed, %d failed\n", total - failed_cases, failed_cases);
  return failed_cases == 0 ? 0 : 1;
}

}  // namespace mbpo_fast_test

#define MBPO_TEST_CAT2(a, b) a##b
#define MBPO_TEST_CAT(a, b) MBPO_TEST_CAT2(a, b)
#define TEST_CASE(name)                                                                \
  static void MBPO_TEST_CAT(test_fn_, __LINE__)();                                     \
  static ::mbpo_fast_test::Registrar MBPO_TEST_CAT(test_reg_, __LINE__)(              \
      name, MBPO_TEST_CAT(test_fn_, __LINE__));                                        \
  static void MBPO_TEST_CAT(test_fn_, __LINE__)()

#define CHECK(cond) \
  do { if (!(cond)) ::mbpo_fast_test::fail(__FILE__, __LINE__, "CHECK(" #cond ")"); } while (0)

#define CHECK_NEAR(a, b, tol)                                                              \
  do {                                                                                     \
    const double _a = (a), _b = (b);                                                       \
    if (!(std::fabs(_a - _b) <= (tol)))                                                    \
      ::mbpo_fast_test::fail(__FILE__, __LINE__, "CHECK_NEAR(" #a ", " #b "): " +         \
                                                     std::to_string(_a) + " vs " + std::to_string(_b)); \
  } while (0)

#define CHECK_THROWS(expr)                                                              \
  do {                                                                                  \
    bool _threw = false;                                                                \
    try { (void)(expr); } catch (const std::exception&) { _threw = true; }              \
    if (!_threw) ::mbpo_fast_test::fail(__FILE__, __LINE__, "CHECK_THROWS(" #expr ")"); \
  } while (0)

#define MBPO_TEST_MAIN \
  int main() { return ::mbpo_fast_test::run_all(); }
