// mbpo_fast::BranchedRollout (branched_rollout.h) over files loaded with Ensemble::load and
// Actor::load: identical to the branched_rollout free function (pool contents and stats),
// built-in termination by env id vs a C++ callable, the disagreement setting, concurrent
// runs, and validation (an unknown env id names the known ones).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "harness.h"
#include "mbpo_fast/branched_rollout.h"
#include "pool_contents.h"
#include "safetensors_writer.h"

using namespace mbpo_fast;
using mbpo_fast_test::st_f32;
using mbpo_fast_test::st_i64;

namespace {

constexpr int64_t kOd = 11, kAd = 3, kE = 4, kHidden = 24;  // Hopper widths

std::vector<float> normal(std::mt19937& gen, size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// A random ensemble (E = 4, 14 -> 24 -> 24 -> 24, elites {3, 0, 1}) saved in the
// EnsembleDynamics.save layout, loaded back with Ensemble::load.
std::shared_ptr<const Ensemble> load_random_model(uint32_t seed) {
  std::mt19937 gen(seed);
  std::map<std::string, mbpo_fast_test::StTensor> t;
  const std::vector<int64_t> widths{kOd + kAd, kHidden, kHidden, 2 * (kOd + 1)};
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    const int64_t in = widths[i], out = widths[i + 1];
    const float scale = (i + 2 == widths.size() ? 0.1f : 1.0f) / std::sqrt(static_cast<float>(in));
    t["layers." + std::to_string(i) + ".weight"] =
        st_f32({kE, in, out}, normal(gen, static_cast<size_t>(kE * in * out), scale));
    t["layers." + std::to_string(i) + ".bias"] =
        st_f32({kE, out}, normal(gen, static_cast<size_t>(kE * out), 0.05f));
  }
  std::vector<float> mean = normal(gen, kOd + kAd, 0.2f), stdv = normal(gen, kOd + kAd, 0.3f);
  for (auto& s : stdv) s = 0.8f + std::fabs(s);
  t["input_mean"] = st_f32({kOd + kAd}, mean);
  t["input_std"] = st_f32({kOd + kAd}, stdv);
  t["max_logvar"] = st_f32({kOd + 1}, std::vector<float>(kOd + 1, -4.0f));
  t["min_logvar"] = st_f32({kOd + 1}, std::vector<float>(kOd + 1, -9.0f));
  t["elites"] = st_i64({3, 0, 1});
  const std::string path = "test_branched_rollout_model_" + std::to_string(seed) + ".safetensors";
  mbpo_fast_test::write_safetensors(path, t, {{"obs_dim", "11"}, {"act_dim", "3"}, {"activation", "silu"}});
  auto model = std::make_shared<const Ensemble>(Ensemble::load(path));
  std::remove(path.c_str());
  return model;
}

// A random SAC actor (11 -> 32 -> 32 -> 6) in the SAC.export_actor layout.
std::shared_ptr<const Actor> load_random_actor(uint32_t seed, int64_t obs_dim = kOd) {
  std::mt19937 gen(seed);
  std::map<std::string, mbpo_fast_test::StTensor> t;
  const std::vector<int64_t> widths{obs_dim, 32, 32, 2 * kAd};
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    const int64_t in = widths[i], out = widths[i + 1];
    t["layers." + std::to_string(i) + ".weight"] = st_f32(
        {in, out}, normal(gen, static_cast<size_t>(in * out), 1.0f / std::sqrt(static_cast<float>(in))));
    t["layers." + std::to_string(i) + ".bias"] = st_f32({out}, normal(gen, static_cast<size_t>(out), 0.1f));
  }
  t["action_scale"] = st_f32({kAd}, {1.0f, 0.5f, 2.0f});
  t["action_bias"] = st_f32({kAd}, {0.0f, 0.1f, -0.5f});
  const std::string path = "test_branched_rollout_actor_" + std::to_string(seed) + ".safetensors";
  mbpo_fast_test::write_safetensors(path, t,
                                    {{"format", "mbpo_fast.actor/1"},
                                     {"obs_dim", std::to_string(obs_dim)},
                                     {"act_dim", "3"},
                                     {"num_layers", "2"},
                                     {"hidden_size", "32"},
                                     {"activation", "relu"},
                                     {"log_std_min", "-20"},
                                     {"log_std_max", "2"}});
  auto actor = std::make_shared<const Actor>(Actor::load(path));
  std::remove(path.c_str());
  return actor;
}

// Real start states near a healthy Hopper pose (some rollouts terminate, most continue).
ReplayPool real_pool(int64_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<float> o = normal(gen, static_cast<size_t>(n * kOd), 0.5f),
                     a = normal(gen, static_cast<size_t>(n * kAd), 0.5f);
  std::vector<float> r = normal(gen, static_cast<size_t>(n), 1.0f),
                     next = normal(gen, static_cast<size_t>(n * kOd), 0.5f);
  for (int64_t i = 0; i < n; ++i) {
    o[static_cast<size_t>(i * kOd)] = 1.25f + 0.1f * o[static_cast<size_t>(i * kOd)];
    o[static_cast<size_t>(i * kOd + 1)] *= 0.2f;
  }
  std::vector<uint8_t> term(static_cast<size_t>(n), 0);
  ReplayPool pool(n, kOd, kAd, 3);
  pool.add_batch(o.data(), a.data(), r.data(), next.data(), term.data(), n);
  return pool;
}

using Contents = mbpo_fast_test::PoolContents;

bool same_stats(const RolloutStats& a, const RolloutStats& b) {
  const bool dis = (std::isnan(a.mean_disagreement) && std::isnan(b.mean_disagreement)) ||
                   a.mean_disagreement == b.mean_disagreement;
  return a.num_starts == b.num_starts && a.rows_added == b.rows_added &&
         a.num_terminated == b.num_terminated && a.nonfinite == b.nonfinite && a.steps_run == b.steps_run &&
         a.mean_length == b.mean_length && a.disagreement_rows == b.disagreement_rows && dis;
}

template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const InvalidArgument& e) {
    return e.what();
  } catch (...) {
    return "<another exception type>";
  }
  return "<no exception>";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

}  // namespace

TEST_CASE("BranchedRollout::run equals the branched_rollout free function") {
  const auto model = load_random_model(11);
  const auto actor = load_random_actor(12);
  const ReplayPool real = real_pool(300, 13);
  const BranchedRollout rollout(model, actor, "Hopper-v5");
  CHECK(rollout.termination_id() == TerminationId::kHopper && !rollout.has_custom_termination());
  CHECK(rollout.disagreement_rows() == BranchedRollout::kDefaultDisagreementRows);

  ReplayPool a(40000, kOd, kAd, 1), b(40000, kOd, kAd, 1);
  const RolloutStats sa = rollout.run(real, a, 2000, 6, 2024);
  const RolloutStats sb =
      branched_rollout(actor->view(), model->view(), TerminationId::kHopper, real, b, 2000, 6, 2024,
                       /*compute_disagreement=*/true, /*disagreement_rows=*/kDisagreementAutoRows);
  CHECK(Contents(a) == Contents(b));
  CHECK(same_stats(sa, sb));
  // The case exercises both endings: some rows terminate, others run to the horizon.
  CHECK(sa.num_terminated > 0 && sa.num_terminated < 2000);
  CHECK(sa.rows_added > 2000 && sa.rows_added == a.size());
  CHECK(std::isfinite(sa.mean_disagreement) && sa.mean_disagreement > 0.0);
  // auto: ceil(stored / 256) rows per step, 8 at the first step (2,000 stored)
  CHECK(sa.disagreement_rows >= sa.steps_run + 7 && sa.disagreement_rows <= 6 * 8);
  CHECK(real.rng_counter() == 0);

  // Another seed gives another rollout; the same seed again the same one.
  ReplayPool c(40000, kOd, kAd, 1), d(40000, kOd, kAd, 1);
  rollout.run(real, c, 2000, 6, 2025);
  rollout.run(real, d, 2000, 6, 2024);
  CHECK(!(Contents(a) == Contents(c)));
  CHECK(Contents(a) == Contents(d));
}

TEST_CASE("termination by id, by env id and by a C++ callable agree") {
  const auto model = load_random_model(21);
  const auto actor = load_random_actor(22);
  const ReplayPool real = real_pool(200, 23);
  int calls = 0;
  TerminationCallback hopper = [&calls](const float*, const float*, const float* next, int64_t n,
                                        uint8_t* out) {
    ++calls;
    terminations(TerminationId::kHopper, next, n, static_cast<int>(kOd), out);
  };
  const BranchedRollout by_name(model, actor, "Hopper-v4", 0);
  const BranchedRollout by_id(model, actor, TerminationId::kHopper, 0);
  const BranchedRollout by_callable(model, actor, hopper, 0);
  CHECK(by_callable.has_custom_termination());
  ReplayPool a(20000, kOd, kAd), b(20000, kOd, kAd), c(20000, kOd, kAd);
  const auto sa = by_name.run(real, a, 700, 5, 8);
  const auto sb = by_id.run(real, b, 700, 5, 8);
  const auto sc = by_callable.run(real, c, 700, 5, 8);
  CHECK(Contents(a) == Contents(b) && Contents(a) == Contents(c));
  CHECK(same_stats(sa, sb) && same_stats(sa, sc));
  CHECK(calls == sc.steps_run && calls >= 2);
  CHECK(std::isnan(sa.mean_disagreement) && sa.disagreement_rows == 0);  // 0 turns it off

  // Pendulum-v1 and a never-terminating callable: every row runs to the horizon.
  const BranchedRollout never(model, actor, TerminationId::kNever);
  ReplayPool p(20000, kOd, kAd);
  const auto sn = never.run(real, p, 300, 4, 1);
  CHECK(sn.rows_added == 1200 && sn.num_terminated == 0 && sn.mean_length == 4.0);
}

TEST_CASE("concurrent runs into separate pools equal a serial run") {
  const auto model = load_random_model(31);
  const auto actor = load_random_actor(32);
  const ReplayPool real = real_pool(500, 33);
  const BranchedRollout rollout(model, actor, "Hopper-v5", -1);
  ReplayPool serial(50000, kOd, kAd);
  const auto s0 = rollout.run(real, serial, 3000, 5, 77);
  CHECK(s0.disagreement_rows == s0.rows_added);  // -1: every stored row
  std::vector<ReplayPool> pools;
  for (int t = 0; t < 4; ++t) pools.emplace_back(50000, kOd, kAd);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] { rollout.run(real, pools[static_cast<size_t>(t)], 3000, 5, 77); });
  for (auto& th : threads) th.join();
  const Contents expected(serial);
  for (const auto& p : pools) CHECK(Contents(p) == expected);
}

TEST_CASE("validation: unknown env ids list the known ones; mismatches are named") {
  const auto model = load_random_model(41);
  const auto actor = load_random_actor(42);
  const std::string msg = message_of([&] { BranchedRollout(model, actor, "Hoper-v5"); });
  CHECK(contains(msg, "Hoper-v5"));
  CHECK(contains(msg, "Hopper-v5") && contains(msg, "Pendulum-v1") && contains(msg, "Walker2d-v5"));
  // A task whose observation width differs from the model's.
  CHECK(contains(message_of([&] { BranchedRollout(model, actor, "Ant-v5"); }), "obs_dim"));
  CHECK(contains(message_of([&] { BranchedRollout(nullptr, actor, "Hopper-v5"); }), "model"));
  CHECK(contains(message_of([&] { BranchedRollout(model, nullptr, "Hopper-v5"); }), "actor"));
  const auto narrow_actor = load_random_actor(43, 10);
  const std::string dims = message_of([&] { BranchedRollout(model, narrow_actor, "Hopper-v5"); });
  CHECK(contains(dims, "actor") && contains(dims, "11") && contains(dims, "10"));
  CHECK(contains(message_of([&] { BranchedRollout(model, actor, TerminationCallback{}); }), "termination"));
  CHECK(contains(message_of([&] { BranchedRollout(model, actor, static_cast<TerminationId>(99)); }), "99"));

  const BranchedRollout rollout(model, actor, "Hopper-v5");
  const ReplayPool real = real_pool(50, 44);
  ReplayPool empty(10, kOd, kAd), wrong(10, kOd + 1, kAd), pool(100, kOd, kAd);
  CHECK(contains(message_of([&] { rollout.run(empty, pool, 5, 2, 0); }), "real_pool"));
  CHECK(contains(message_of([&] { rollout.run(real, wrong, 5, 2, 0); }), "model_pool"));
  CHECK(contains(message_of([&] { rollout.run(real, pool, -1, 2, 0); }), "num_starts"));
  CHECK(contains(message_of([&] { rollout.run(real, pool, 5, -2, 0); }), "horizon"));
  CHECK(pool.size() == 0);
}

// A small learned termination model (in = 2 * obs_dim + act_dim -> 4 -> 1), random weights.
std::shared_ptr<const TerminationModel> random_termination(int64_t od, int64_t ad, uint32_t seed) {
  std::mt19937 gen(seed);
  const int64_t in = 2 * od + ad;
  std::vector<float> stdv(static_cast<size_t>(in), 1.0f);
  return std::make_shared<const TerminationModel>(
      od, ad, std::vector<int64_t>{in, 4, 1}, normal(gen, static_cast<size_t>(in), 0.1f), stdv,
      std::vector<std::vector<float>>{normal(gen, static_cast<size_t>(in * 4), 0.5f), normal(gen, 4, 0.5f)},
      std::vector<std::vector<float>>{normal(gen, 4, 0.1f), normal(gen, 1, 0.1f)});
}

TEST_CASE("a learned termination model: its dims are checked against the model's") {
  // (fuzz_checkpoint_load: a termination_model.safetensors of another run read rows of the
  // wrong width out of bounds through TerminationModel::callback())
  const auto model = load_random_model(51);
  const auto actor = load_random_actor(52);
  const ReplayPool real = real_pool(200, 53);
  const auto term = random_termination(kOd, kAd, 54);
  const BranchedRollout by_model(model, actor, term, 0);
  const BranchedRollout by_callback(model, actor, term->callback(), 0);
  ReplayPool a(5000, kOd, kAd), b(5000, kOd, kAd);
  CHECK(same_stats(by_model.run(real, a, 300, 3, 9), by_callback.run(real, b, 300, 3, 9)));
  CHECK(Contents(a) == Contents(b) && a.size() > 0);
  const auto narrower = random_termination(kOd - 1, kAd, 55);
  const auto wider_act = random_termination(kOd, kAd + 1, 56);
  const std::string other = message_of([&] { BranchedRollout(model, actor, narrower); });
  CHECK(contains(other, "termination") && contains(other, "10") && contains(other, "11"));
  CHECK(contains(message_of([&] { BranchedRollout(model, actor, wider_act); }), "act_dim"));
  const std::shared_ptr<const TerminationModel> none;
  CHECK(contains(message_of([&] { BranchedRollout(model, actor, none); }), "termination"));
}

TEST_CASE("TerminationModel::load: dims whose 2 * obs_dim + act_dim overflows are a FormatError") {
  const std::string path = "test_branched_rollout_term_dims.safetensors";
  mbpo_fast_test::write_safetensors(path, {{"input_mean", st_f32({1}, {0.0f})}},
                                    {{"format", "mbpo_fast.termination_model/1"},
                                     {"obs_dim", "4611686018427387904"},
                                     {"act_dim", "4611686018427387904"},
                                     {"num_layers", "1"}});
  std::string msg;
  try {
    TerminationModel::load(path);
  } catch (const FormatError& e) {
    msg = e.what();
  }
  std::remove(path.c_str());
  CHECK(contains(msg, "obs_dim") && contains(msg, path));
}

MBPO_TEST_MAIN
