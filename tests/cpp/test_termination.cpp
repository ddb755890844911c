// Built-in termination functions: exact bounds (strict vs inclusive), NaN/Inf, the float32 vs
// float64 semantics, env-id lookup, width validation and the batched loop.
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "harness.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/termination.h"

using namespace mbpo_fast;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

// A healthy observation of width d for each task, then element i set to v.
std::vector<double> healthy(TerminationId id, int d) {
  std::vector<double> x(static_cast<size_t>(d), 0.05);
  switch (id) {
    case TerminationId::kHopper: x[0] = 1.25; break;
    case TerminationId::kWalker2d: x[0] = 1.25; break;
    case TerminationId::kAnt: x[0] = 0.55; break;
    case TerminationId::kHumanoid: x[0] = 1.4; break;
    default: break;
  }
  return x;
}

bool term_d(TerminationId id, std::vector<double> x) {
  return is_terminal<double>(id, x.data(), static_cast<int>(x.size()));
}

bool term_f(TerminationId id, const std::vector<double>& x) {
  std::vector<float> f(x.begin(), x.end());
  return is_terminal(id, f.data(), static_cast<int>(f.size()));
}

bool with(TerminationId id, int d, int i, double v) {
  auto x = healthy(id, d);
  x[static_cast<size_t>(i)] = v;
  const bool a = term_d(id, x);
  // float32 agrees whenever v is exactly representable (all values used below except noted).
  if (static_cast<double>(static_cast<float>(v)) == v || std::isnan(v)) CHECK(term_f(id, x) == a);
  return a;
}

}  // namespace

TEST_CASE("healthy observations are not terminal") {
  CHECK(!term_d(TerminationId::kHopper, healthy(TerminationId::kHopper, 11)));
  CHECK(!term_d(TerminationId::kWalker2d, healthy(TerminationId::kWalker2d, 17)));
  CHECK(!term_d(TerminationId::kAnt, healthy(TerminationId::kAnt, 27)));
  CHECK(!term_d(TerminationId::kAnt, healthy(TerminationId::kAnt, 105)));
  CHECK(!term_d(TerminationId::kHumanoid, healthy(TerminationId::kHumanoid, 45)));
  CHECK(!term_d(TerminationId::kInvertedPendulum, healthy(TerminationId::kInvertedPendulum, 4)));
}

TEST_CASE("Hopper: strict bounds on z, angle and the state vector") {
  const auto H = TerminationId::kHopper;
  CHECK(with(H, 11, 0, 0.7));             // z must be > 0.7
  CHECK(!with(H, 11, 0, 0.7000001));
  CHECK(!with(H, 11, 0, 1e30));           // no finite upper bound
  CHECK(with(H, 11, 0, kInf));            // z < inf is strict
  CHECK(with(H, 11, 0, kNaN));
  CHECK(with(H, 11, 1, 0.2));             // |angle| < 0.2 strict
  CHECK(with(H, 11, 1, -0.2));
  CHECK(!with(H, 11, 1, 0.1999999));
  CHECK(!with(H, 11, 1, -0.1999999));
  CHECK(with(H, 11, 5, 100.0));           // state in (-100, 100) strict, obs[1:]
  CHECK(with(H, 11, 10, -100.0));
  CHECK(!with(H, 11, 10, 99.99));
  CHECK(!with(H, 11, 7, -99.99));
  CHECK(with(H, 11, 6, kNaN));
  CHECK(with(H, 11, 6, -kInf));
  // float32(0.7) = 0.69999998807... is below the real 0.7: terminal in float32 too.
  std::vector<float> f(11, 0.05f);
  f[0] = 0.7f;
  CHECK(is_terminal(H, f.data(), 11));
  f[0] = std::nextafter(0.7f, 1.0f);  // 0.70000005
  CHECK(!is_terminal(H, f.data(), 11));
}

TEST_CASE("Walker2d: strict z in (0.8, 2.0), angle in (-1, 1), nothing else checked") {
  const auto W = TerminationId::kWalker2d;
  CHECK(with(W, 17, 0, 0.8));
  CHECK(!with(W, 17, 0, 0.8000001));
  CHECK(with(W, 17, 0, 2.0));
  CHECK(!with(W, 17, 0, 1.9999999));
  CHECK(with(W, 17, 1, 1.0));
  CHECK(with(W, 17, 1, -1.0));
  CHECK(!with(W, 17, 1, 0.9999999));
  CHECK(with(W, 17, 0, kNaN));
  CHECK(with(W, 17, 1, kNaN));
  CHECK(!with(W, 17, 5, kNaN));   // gymnasium's Walker2d has no finiteness check
  CHECK(!with(W, 17, 16, 1e9));
}

TEST_CASE("Ant: inclusive z in [0.2, 1.0], finiteness of obs[:27] only") {
  const auto A = TerminationId::kAnt;
  CHECK(!with(A, 27, 0, 1.0));    // inclusive upper bound
  CHECK(with(A, 27, 0, 1.0000001));
  CHECK(!with(A, 27, 0, 0.2));    // inclusive lower bound (0.2 is not a float: float32 differs)
  CHECK(with(A, 27, 0, 0.1999999));
  CHECK(with(A, 27, 26, kNaN));   // last qvel entry
  CHECK(with(A, 27, 13, kInf));
  CHECK(with(A, 105, 3, -kInf));
  CHECK(!with(A, 105, 27, kNaN));  // contact forces are not part of gymnasium's check
  CHECK(!with(A, 111, 110, kInf));
  CHECK(!with(A, 27, 5, 1e300));   // finite, however large
  // float32(0.2) = 0.200000003: inside [0.2, 1]; the largest float below it is outside.
  std::vector<float> f(27, 0.05f);
  f[0] = 0.2f;
  CHECK(!is_terminal(A, f.data(), 27));
  f[0] = std::nextafter(0.2f, 0.0f);
  CHECK(is_terminal(A, f.data(), 27));
}

TEST_CASE("Humanoid: strict z in (1.0, 2.0) only") {
  const auto U = TerminationId::kHumanoid;
  CHECK(with(U, 45, 0, 1.0));
  CHECK(with(U, 45, 0, 2.0));
  CHECK(!with(U, 45, 0, 1.0000001));
  CHECK(!with(U, 348, 0, 1.9999999));
  CHECK(with(U, 376, 0, kNaN));
  CHECK(!with(U, 45, 1, kNaN));
}

TEST_CASE("InvertedPendulum: |angle| <= 0.2 inclusive, every entry finite") {
  const auto P = TerminationId::kInvertedPendulum;
  CHECK(!with(P, 4, 1, 0.2));
  CHECK(!with(P, 4, 1, -0.2));
  CHECK(with(P, 4, 1, 0.2000001));
  CHECK(with(P, 4, 1, -0.2000001));
  CHECK(with(P, 4, 0, kNaN));
  CHECK(with(P, 4, 3, kInf));
  CHECK(!with(P, 4, 0, 1e6));
}

TEST_CASE("never-terminating tasks and unknown ids are never terminal") {
  std::vector<double> x(17, kNaN);
  CHECK(!is_terminal<double>(TerminationId::kHalfCheetah, x.data(), 17));
  CHECK(!is_terminal<double>(TerminationId::kPendulum, x.data(), 3));
  CHECK(!is_terminal<double>(TerminationId::kNever, x.data(), 17));
  CHECK(!is_terminal<double>(static_cast<TerminationId>(99), x.data(), 17));
}

TEST_CASE("env id lookup and observation widths") {
  CHECK(termination_id_from_env("Hopper-v5") == TerminationId::kHopper);
  CHECK(termination_id_from_env("Hopper-v4") == TerminationId::kHopper);
  CHECK(termination_id_from_env("Ant-v5") == TerminationId::kAnt);
  CHECK(termination_id_from_env("Humanoid-v4") == TerminationId::kHumanoid);
  CHECK(termination_id_from_env("InvertedPendulum-v5") == TerminationId::kInvertedPendulum);
  CHECK(termination_id_from_env("HalfCheetah-v5") == TerminationId::kHalfCheetah);
  CHECK(termination_id_from_env("Pendulum-v1") == TerminationId::kPendulum);
  CHECK_THROWS(termination_id_from_env("hopper-v5"));
  CHECK_THROWS(termination_id_from_env("InvertedDoublePendulum-v5"));
  try {
    termination_id_from_env("Foo-v0");
    CHECK(false);
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("Foo-v0") != std::string::npos);
    CHECK(msg.find("Walker2d-v5") != std::string::npos);
    CHECK(msg.find("callable") != std::string::npos);
  }
  CHECK(accepts_obs_dim(TerminationId::kHopper, 11) && !accepts_obs_dim(TerminationId::kHopper, 12));
  CHECK(accepts_obs_dim(TerminationId::kAnt, 27) && accepts_obs_dim(TerminationId::kAnt, 105) &&
        accepts_obs_dim(TerminationId::kAnt, 111) && !accepts_obs_dim(TerminationId::kAnt, 29));
  for (int64_t d : {45, 62, 123, 140, 175, 192, 201, 218, 253, 270, 331, 348, 376}) {
    CHECK(accepts_obs_dim(TerminationId::kHumanoid, d));
  }
  CHECK(!accepts_obs_dim(TerminationId::kHumanoid, 47));
  CHECK(accepts_obs_dim(TerminationId::kNever, 1) && !accepts_obs_dim(TerminationId::kNever, 0));
  CHECK_THROWS(check_termination_args(1, 12));
  CHECK_THROWS(check_termination_args(-1, 11));
  CHECK_THROWS(check_termination_args(kNumTerminationIds, 11));
  try {
    check_termination_args(static_cast<int32_t>(TerminationId::kWalker2d), 11, "next_obs");
    CHECK(false);
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("next_obs") != std::string::npos && msg.find("17") != std::string::npos &&
          msg.find("11") != std::string::npos);
  }
}

TEST_CASE("batched terminations equal the element body, on any thread count") {
  const int64_t batch = 300001;  // > 2 grains (2^17 rows): runs threaded
  const int d = 11;
  std::vector<float> obs(static_cast<size_t>(batch * d));
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (auto& v : obs) {  // xorshift: values around the Hopper bounds
    s ^= s << 13; s ^= s >> 7; s ^= s << 17;
    v = static_cast<float>((s >> 11) * (1.0 / 9007199254740992.0)) * 1.6f - 0.3f;
  }
  std::vector<uint8_t> out(static_cast<size_t>(batch), 7), out1(static_cast<size_t>(batch), 7);
  set_num_threads(2);
  terminations(TerminationId::kHopper, obs.data(), batch, d, out.data());
  set_num_threads(1);
  terminations(TerminationId::kHopper, obs.data(), batch, d, out1.data());
  int64_t mismatches = 0, terminal = 0;
  for (int64_t b = 0; b < batch; ++b) {
    const bool e = is_terminal(TerminationId::kHopper, obs.data() + b * d, d);
    mismatches += (out[b] != (e ? 1 : 0)) + (out1[b] != out[b]);
    terminal += out[b];
  }
  CHECK(mismatches == 0);
  CHECK(terminal > 0 && terminal < batch);
  std::vector<double> obs64(obs.begin(), obs.end());
  std::vector<uint8_t> out64(static_cast<size_t>(batch));
  terminations(TerminationId::kHopper, obs64.data(), batch, d, out64.data());
  CHECK(out64 == out);  // the float values are exact in double
  CHECK_THROWS(terminations(TerminationId::kHopper, obs.data(), -1, d, out.data()));
  CHECK_THROWS(terminations(TerminationId::kAnt, obs.data(), batch, d, out.data()));
  terminations(TerminationId::kHopper, obs.data(), 0, d, nullptr);  // empty batch: no access
}

MBPO_TEST_MAIN
