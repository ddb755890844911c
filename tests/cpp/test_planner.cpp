// The MPC planner (planner.h): random shooting and CEM find the optimum of a known quadratic
// problem through a model whose dynamics are exactly next = obs + act; TS-inf keeps every
// particle's member for the whole horizon (TS-1 redraws it); a terminated particle collects no
// further reward; a non-finite reward fails its particle; mbpo_fast::Planner over a loaded
// file is reproducible from its seed and validates its arguments.
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "harness.h"
#include "mbpo_fast/planner.h"
#include "safetensors_writer.h"

using namespace mbpo_fast;

namespace {

// A one-layer ensemble (no hidden layer) with mean(Δobs) = act exactly and a tiny std
// (logvar clamped near -20): next_obs = obs + act + O(1e-4) noise, reward output = 0.
// obs_dim = act_dim = d, E members (identical), elites = all.
struct LinearModel {
  int64_t d, E;
  std::vector<float> mean, stdv, w, b, maxlv, minlv;
  std::vector<int64_t> elites;
  EnsembleView view;

  LinearModel(int64_t d_, int64_t E_) : d(d_), E(E_) {
    const int64_t in = 2 * d, out = 2 * (d + 1);
    mean.assign(static_cast<size_t>(in), 0.0f);
    stdv.assign(static_cast<size_t>(in), 1.0f);
    w.assign(static_cast<size_t>(E * in * out), 0.0f);
    b.assign(static_cast<size_t>(E * out), 0.0f);
    for (int64_t e = 0; e < E; ++e) {
      for (int64_t j = 0; j < d; ++j) w[static_cast<size_t>(e * in * out + (d + j) * out + j)] = 1.0f;  // act -> Δobs
      for (int64_t j = d + 1; j < out; ++j) b[static_cast<size_t>(e * out + j)] = -20.0f;             // raw logvar
    }
    maxlv.assign(static_cast<size_t>(d + 1), -20.0f);
    minlv.assign(static_cast<size_t>(d + 1), -24.0f);
    for (int64_t e = 0; e < E; ++e) elites.push_back(e);
    view.obs_dim = d;
    view.act_dim = d;
    view.ensemble_size = E;
    view.num_layers = 1;
    view.widths[0] = in;
    view.widths[1] = out;
    view.input_mean = mean.data();
    view.input_std = stdv.data();
    view.weights[0] = w.data();
    view.biases[0] = b.data();
    view.max_logvar = maxlv.data();
    view.min_logvar = minlv.data();
    view.elites = elites.data();
    view.num_elites = E;
  }
};

// reward = -||next_obs - goal||^2 (a quadratic with its optimum at next_obs = goal).
RewardCallback quadratic_reward(std::vector<float> goal) {
  return [goal](const float*, const float*, const float* next, int64_t n, float* out) {
    const int64_t d = static_cast<int64_t>(goal.size());
    for (int64_t i = 0; i < n; ++i) {
      double s = 0.0;
      for (int64_t j = 0; j < d; ++j) {
        const double diff = static_cast<double>(next[i * d + j]) - goal[static_cast<size_t>(j)];
        s += diff * diff;
      }
      out[i] = static_cast<float>(-s);
    }
  };
}

PlannerConfig box_config(int64_t d, float bound) {
  PlannerConfig c;
  c.action_low.assign(static_cast<size_t>(d), -bound);
  c.action_high.assign(static_cast<size_t>(d), bound);
  return c;
}

std::vector<float> normal(std::mt19937& gen, size_t n, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// A random Pendulum-sized ensemble (obs 3, act 1, E = 5, 4 -> 16 -> 16 -> 8) saved and loaded.
std::shared_ptr<const Ensemble> load_pendulum_model(uint32_t seed) {
  std::mt19937 gen(seed);
  std::map<std::string, mbpo_fast_test::StTensor> t;
  const std::vector<int64_t> widths{4, 16, 16, 8};
  const int64_t E = 5;
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    const int64_t in = widths[i], out = widths[i + 1];
    t["layers." + std::to_string(i) + ".weight"] = mbpo_fast_test::st_f32(
        {E, in, out}, normal(gen, static_cast<size_t>(E * in * out), 0.5f / std::sqrt(static_cast<float>(in))));
    t["layers." + std::to_string(i) + ".bias"] =
        mbpo_fast_test::st_f32({E, out}, normal(gen, static_cast<size_t>(E * out), 0.05f));
  }
  t["input_mean"] = mbpo_fast_test::st_f32({4}, normal(gen, 4, 0.1f));
  t["input_std"] = mbpo_fast_test::st_f32({4}, {1.0f, 1.0f, 2.0f, 1.5f});
  t["max_logvar"] = mbpo_fast_test::st_f32({4}, std::vector<float>(4, -2.0f));
  t["min_logvar"] = mbpo_fast_test::st_f32({4}, std::vector<float>(4, -8.0f));
  t["elites"] = mbpo_fast_test::st_i64({4, 1, 2});
  const std::string path = "test_planner_model_" + std::to_string(seed) + ".safetensors";
  mbpo_fast_test::write_safetensors(path, t, {{"obs_dim", "3"}, {"act_dim", "1"}, {"activation", "silu"}});
  auto model = std::make_shared<const Ensemble>(Ensemble::load(path));
  std::remove(path.c_str());
  return model;
}

template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no exception>";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("random shooting finds the optimum of a quadratic (horizon 1)") {
  std::mt19937 gen(1);
  for (int trial = 0; trial < 3; ++trial) {
    LinearModel m(2, 3);
    const std::vector<float> obs = normal(gen, 2, 0.3f), goal = normal(gen, 2, 0.3f);
    PlanObjective obj;
    obj.reward_callback = quadratic_reward(goal);
    PlannerConfig c = box_config(2, 1.0f);
    c.optimizer = PlanOptimizer::kRandom;
    c.horizon = 1;
    c.population = 4000;
    c.particles = 2;
    std::vector<float> mean(2, 0.0f), action(2), mean_out(2);
    const PlanResult r = plan_optimize(m.view, c, obj, obs.data(), mean.data(), 7 + trial, action.data(),
                                       mean_out.data());
    for (int j = 0; j < 2; ++j) CHECK_NEAR(action[j], goal[j] - obs[j], 0.06);
    CHECK(r.best_value <= 0.0 && r.best_value > -0.004);
    CHECK(r.iterations == 1 && r.failed == 0);
  }
}

TEST_CASE("CEM finds the optimum of a quadratic over a horizon") {
  std::mt19937 gen(2);
  for (int trial = 0; trial < 3; ++trial) {
    LinearModel m(3, 4);
    const std::vector<float> obs = normal(gen, 3, 0.4f), goal = normal(gen, 3, 0.4f);
    PlanObjective obj;
    obj.reward_callback = quadratic_reward(goal);
    PlannerConfig c = box_config(3, 1.5f);
    c.horizon = 4;
    c.population = 400;
    c.elites = 40;
    c.iterations = 20;  // plain CEM in 12 dimensions needs ~15 to get within 0.05
    c.particles = 2;
    std::vector<float> mean(12, 0.0f), action(3), mean_out(12);
    const PlanResult r =
        plan_optimize(m.view, c, obj, obs.data(), mean.data(), 100 + trial, action.data(), mean_out.data());
    // Optimum: reach the goal at the first step, then stay (a = 0).
    for (int j = 0; j < 3; ++j) CHECK_NEAR(action[j], goal[j] - obs[j], 0.05);
    for (int k = 3; k < 12; ++k) CHECK_NEAR(mean_out[k], 0.0, 0.1);
    CHECK(r.iterations == 20 && r.elite_value > -0.01);
  }
}

TEST_CASE("TS-inf keeps each particle's member; TS-1 redraws it every step") {
  LinearModel m(2, 5);
  std::vector<int64_t> elites{4, 1, 3};
  m.view.elites = elites.data();
  m.view.num_elites = 3;
  std::mt19937 gen(3);
  const int64_t N = 16, H = 6, P = 8, R = N * P;
  std::vector<float> actions = normal(gen, static_cast<size_t>(N * H * 2), 0.3f), obs = normal(gen, 2, 1.0f);
  PlanObjective obj;  // the model's reward
  std::vector<double> values(N);
  std::vector<int64_t> members(static_cast<size_t>(H * R));
  plan_evaluate(m.view, obj, obs.data(), actions.data(), N, H, P, Propagation::kTsInf, 99, values.data(),
                members.data());
  std::set<int64_t> seen;
  bool constant = true;
  for (int64_t r = 0; r < R; ++r) {
    seen.insert(members[r]);
    for (int64_t t = 1; t < H; ++t) constant = constant && members[t * R + r] == members[r];
    CHECK(members[r] == elites[random_index(99, kStreamMemberChoice, static_cast<uint64_t>(r), 3)]);
  }
  CHECK(constant);
  CHECK(seen == std::set<int64_t>({1, 3, 4}));
  plan_evaluate(m.view, obj, obs.data(), actions.data(), N, H, P, Propagation::kTs1, 99, values.data(),
                members.data());
  int64_t changes = 0;
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t t = 0; t < H; ++t) {
      const uint64_t seed_t = rollout_step_seed(99, t);
      CHECK(members[t * R + r] == elites[random_index(seed_t, kStreamMemberChoice, static_cast<uint64_t>(r), 3)]);
      if (t > 0 && members[t * R + r] != members[(t - 1) * R + r]) ++changes;
    }
  }
  CHECK(changes > R);  // about 2/3 of the R * (H - 1) transitions
}

TEST_CASE("a terminated particle collects no further reward; a non-finite reward fails it") {
  LinearModel m(1, 2);
  const int64_t H = 6;
  std::vector<float> obs{0.0f};
  std::vector<float> actions(H, 0.3f);  // obs after step t: 0.3 (t + 1)
  PlanObjective obj;
  obj.reward_callback = [](const float*, const float*, const float*, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = 1.0f;
  };
  obj.termination_callback = [](const float*, const float*, const float* next, int64_t n, uint8_t* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = next[i] > 1.0f;
  };
  double value = 0.0;
  plan_evaluate(m.view, obj, obs.data(), actions.data(), 1, H, 3, Propagation::kTsInf, 5, &value);
  CHECK(value == 4.0);  // steps 0..3 (0.3, 0.6, 0.9, 1.2: terminal) are rewarded, 4 and 5 are not
  obj.reward_callback = [](const float*, const float*, const float* next, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = next[i] > 0.5f ? std::nanf("") : 1.0f;
  };
  plan_evaluate(m.view, obj, obs.data(), actions.data(), 1, H, 3, Propagation::kTsInf, 5, &value);
  CHECK(std::isinf(value) && value < 0);
}

TEST_CASE("Planner: reproducible from its seed, warm start shifts, reset, validation") {
  const auto model = load_pendulum_model(21);
  PlannerConfig c = box_config(1, 2.0f);
  c.population = 60;
  c.elites = 6;
  c.iterations = 3;
  c.horizon = 8;
  c.particles = 4;
  Planner a(model, c, "Pendulum-v1", 3), b(model, c, "Pendulum-v1", 3), other(model, c, "Pendulum-v1", 4);
  const std::vector<float> obs{0.6f, 0.8f, -0.3f};
  for (int k = 0; k < 3; ++k) {
    const std::vector<float> x = a.plan(obs), y = b.plan(obs);
    CHECK(x == y);
    CHECK(x[0] >= -2.0f && x[0] <= 2.0f);
    CHECK(a.mean() == b.mean());
    CHECK(a.mean()[7] == 0.0f);  // the shifted-in last step: the middle of the box
  }
  CHECK(a.calls() == 3);
  CHECK(other.plan(obs) != a.plan(obs));
  a.reset();
  for (float v : a.mean()) CHECK(v == 0.0f);
  CHECK(contains(message_of([&] { a.plan(std::vector<float>{1.0f, 2.0f}); }), "obs: expected shape (3,)"));
  const std::vector<float> before = a.mean();
  CHECK(contains(message_of([&] { a.plan(std::vector<float>{1.0f, NAN, 0.0f}); }), "obs: contains a non-finite"));
  CHECK(a.mean() == before);
  CHECK(contains(message_of([&] { Planner p(model, c, "Hopper-v5"); }), "expects obs_dim 11 and act_dim 3"));
  CHECK(contains(message_of([&] { Planner p(model, c, "CartPole-v1"); }), "Pendulum-v1"));
  PlannerConfig bad = c;
  bad.elites = 61;
  CHECK(contains(message_of([&] { Planner p(model, bad, "Pendulum-v1"); }), "elites: expected 1 <= elites <= population = 60, got 61"));
  bad = c;
  bad.action_high = {2.0f, 1.0f};
  CHECK(contains(message_of([&] { Planner p(model, bad, "Pendulum-v1"); }), "action_high: expected shape (1,), got (2,)"));
  CHECK(contains(message_of([&] { Planner p(nullptr, c, "Pendulum-v1"); }), "model"));
}

TEST_CASE("built-in rewards: Pendulum and InvertedPendulum values") {
  const float obs[3] = {std::cos(2.5f), std::sin(2.5f), 1.5f};
  const float act[1] = {3.0f};  // clipped to 2
  const double th = std::atan2(static_cast<double>(obs[1]), static_cast<double>(obs[0]));
  CHECK_NEAR(builtin_reward(RewardId::kPendulum, obs, act, obs, 3, 1), -(th * th + 0.1 * 2.25 + 0.004), 1e-6);
  const float ok[4] = {0.1f, 0.19f, 0.0f, 0.0f}, fallen[4] = {0.1f, -0.21f, 0.0f, 0.0f};
  CHECK(builtin_reward(RewardId::kInvertedPendulum, ok, act, ok, 4, 1) == 1.0f);
  CHECK(builtin_reward(RewardId::kInvertedPendulum, ok, act, fallen, 4, 1) == 0.0f);
  CHECK(reward_id_from_env("HalfCheetah-v5") == RewardId::kHalfCheetah);
  CHECK_THROWS(check_reward_args(static_cast<int32_t>(RewardId::kHopper), 11, 2));
}

MBPO_TEST_MAIN
