// C++ tests of the CUDA entry points that run without a GPU: the row grouping the CUDA step
// launches with (ensemble_step_plan, the same MBPO_HD index math) against the CPU step, and
// the errors of the device entry points when no device (or no CUDA build) is present.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness.h"
#include "kernels/pool_segments.h"
#include "mbpo_fast/cuda.h"
#include "mbpo_fast/cuda_ops.h"
#include "mbpo_fast/ensemble.h"
#include "mbpo_fast/replay_pool.h"

using namespace mbpo_fast;

namespace {

// A small random ensemble (obs 3, act 2, E 5, one hidden layer of 8) with its storage.
struct Small {
  std::vector<float> w0, b0, w1, b1, mean, std_, maxlv, minlv;
  std::vector<int64_t> elites{4, 1, 3};
  EnsembleView view;
  Small() {
    std::mt19937 g(7);
    std::normal_distribution<float> n(0.0f, 0.5f);
    auto fill = [&](std::vector<float>& v, size_t count) {
      v.resize(count);
      for (auto& x : v) x = n(g);
    };
    fill(w0, 5 * 5 * 8);
    fill(b0, 5 * 8);
    fill(w1, 5 * 8 * 8);
    fill(b1, 5 * 8);
    fill(mean, 5);
    std_.assign(5, 1.5f);
    maxlv.assign(4, 0.5f);
    minlv.assign(4, -5.0f);
    view.obs_dim = 3;
    view.act_dim = 2;
    view.ensemble_size = 5;
    view.num_layers = 2;
    view.widths[0] = 5;
    view.widths[1] = 8;
    view.widths[2] = 8;
    view.weights[0] = w0.data();
    view.biases[0] = b0.data();
    view.weights[1] = w1.data();
    view.biases[1] = b1.data();
    view.input_mean = mean.data();
    view.input_std = std_.data();
    view.max_logvar = maxlv.data();
    view.min_logvar = minlv.data();
    view.elites = elites.data();
    view.num_elites = 3;
  }
};

}  // namespace

TEST_CASE("plan: members are the CPU step's, tiles cover every row once within the grid bound") {
  Small m;
  for (int64_t batch : {1, 31, 32, 33, 500}) {
    std::vector<float> obs(static_cast<size_t>(batch * 3), 0.25f), act(static_cast<size_t>(batch * 2), -0.5f);
    std::vector<float> next(static_cast<size_t>(batch * 3)), rew(static_cast<size_t>(batch));
    std::vector<int64_t> used(static_cast<size_t>(batch));
    ensemble_step(m.view, obs.data(), act.data(), batch, 99, false, nullptr, next.data(), rew.data(), used.data());
    const EnsembleStepPlan plan = ensemble_step_plan(m.view, batch, 99, nullptr, kCudaEnsembleTileRows);
    CHECK(plan.member == used);
    std::vector<int> covered(static_cast<size_t>(batch), 0);
    for (size_t t = 0; t < plan.tile_member.size(); ++t) {
      const int64_t e = plan.tile_member[t];
      CHECK(plan.tile_rows[t] >= 1 && plan.tile_rows[t] <= kCudaEnsembleTileRows);
      CHECK(plan.tile_first[t] >= plan.start[e] && plan.tile_first[t] + plan.tile_rows[t] <= plan.start[e + 1]);
      for (int64_t p = plan.tile_first[t]; p < plan.tile_first[t] + plan.tile_rows[t]; ++p) {
        const int64_t row = plan.order[static_cast<size_t>(p)];
        ++covered[static_cast<size_t>(row)];
        CHECK(used[static_cast<size_t>(row)] == e);
      }
    }
    CHECK(std::all_of(covered.begin(), covered.end(), [](int c) { return c == 1; }));
    CHECK(static_cast<int64_t>(plan.tile_member.size()) <=
          (batch + kCudaEnsembleTileRows - 1) / kCudaEnsembleTileRows + m.view.ensemble_size);
  }
}

TEST_CASE("device entry points raise (never crash) without a device") {
  if (cuda_device_count() > 0) return;  // covered by the gpu tests
  Small m;
  CHECK_THROWS(CudaReplayPool(16, 3, 2, 0));
  float dummy = 0.0f;
  std::vector<unsigned char> ws(4096);
  CHECK_THROWS(cuda_ensemble_step(m.view, &dummy, &dummy, 1, 0, false, nullptr, &dummy, &dummy, nullptr, ws.data(),
                                  ws.size(), nullptr));
  CHECK_THROWS(cuda_ensemble_predict(m.view, &dummy, &dummy, 1, &dummy, &dummy, nullptr));
}

TEST_CASE("device uncertainty step and learned termination validate before any CUDA call") {
  Small m;
  float dummy = 0.0f;
  std::vector<unsigned char> ws(4096);
  // one elite: d (a variance across the elites) is undefined -> InvalidArgument, with or without a device
  m.view.num_elites = 1;
  bool invalid = false;
  try {
    cuda_ensemble_step_uncertainty(m.view, &dummy, &dummy, 1, 0, false, &dummy, &dummy, &dummy, ws.data(), ws.size(),
                                   nullptr);
  } catch (const InvalidArgument& e) {
    invalid = std::string(e.what()).find("2 elites") != std::string::npos;
  } catch (const std::runtime_error&) {  // a build without CUDA reports that first
    invalid = !cuda_compiled();
  }
  CHECK(invalid);
  m.view.num_elites = 3;
  if (cuda_device_count() == 0) {
    CHECK_THROWS(cuda_ensemble_step_uncertainty(m.view, &dummy, &dummy, 1, 0, false, &dummy, &dummy, &dummy,
                                                ws.data(), ws.size(), nullptr));
  }
  TerminationMLPView t;  // widths inconsistent with obs/act dims
  t.obs_dim = 3;
  t.act_dim = 2;
  t.num_layers = 1;
  t.widths[0] = 5;
  t.widths[1] = 1;
  t.weights[0] = &dummy;
  t.biases[0] = &dummy;
  t.input_mean = &dummy;
  t.input_std = &dummy;
  uint8_t out = 0;
  CHECK_THROWS(cuda_termination_mlp(t, &dummy, &dummy, &dummy, 1, &out, nullptr, nullptr));
}

TEST_CASE("CUDA planner refuses callbacks and bad arguments before any CUDA call") {
  Small m;
  PlannerConfig cfg;
  cfg.horizon = 3;
  cfg.population = 8;
  cfg.elites = 2;
  cfg.particles = 2;
  cfg.action_low = {-1.0f, -1.0f};
  cfg.action_high = {1.0f, 1.0f};
  PlanObjective obj;
  obj.reward_callback = [](const float*, const float*, const float*, int64_t n, float* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = 0.0f;
  };
  const std::vector<float> obs{0.1f, 0.2f, 0.3f}, mean(6, 0.0f);
  std::vector<float> action(2), mean_out(6);
  auto message = [&](auto&& call) -> std::string {
    try {
      call();
    } catch (const std::exception& e) {
      return e.what();
    }
    return "";
  };
  const std::string callback = message(
      [&] { cuda_plan_optimize(m.view, cfg, obj, obs.data(), mean.data(), 1, action.data(), mean_out.data(), nullptr); });
  CHECK(callback.find(cuda_compiled() ? "callback" : "without CUDA") != std::string::npos);
  obj.reward_callback = nullptr;
  cfg.elites = 9;  // > population
  const std::string elites = message(
      [&] { cuda_plan_optimize(m.view, cfg, obj, obs.data(), mean.data(), 1, action.data(), mean_out.data(), nullptr); });
  CHECK(elites.find(cuda_compiled() ? "elites" : "without CUDA") != std::string::npos);
  std::vector<double> values(8);
  const std::vector<float> bad(8 * 3 * 2, std::nanf(""));
  const std::string nan = message([&] {
    cuda_plan_evaluate(m.view, obj, obs.data(), bad.data(), 8, 3, 2, Propagation::kTsInf, 1, values.data(), nullptr,
                       nullptr);
  });
  CHECK(nan.find(cuda_compiled() ? "non-finite" : "without CUDA") != std::string::npos);
}

TEST_CASE("slot_segments (device pool save/load copies) are the CPU pool's slots of every logical row") {
  // Pools of capacity 7 after n single adds (wrapping several times), then every range of
  // logical rows: the two runs must list exactly ReplayPool::slot(r) for r in the range.
  const float o[2] = {0.5f, -1.0f}, a[1] = {0.25f};
  for (int64_t adds : {0, 1, 3, 6, 7, 8, 13, 20}) {
    ReplayPool pool(7, 2, 1, 0);
    for (int64_t i = 0; i < adds; ++i) pool.add(o, a, 1.0f, o, false);
    for (int64_t row0 = 0; row0 <= pool.size(); ++row0) {
      for (int64_t n = 0; row0 + n <= pool.size(); ++n) {
        const kernels::SlotSegments s =
            kernels::slot_segments(pool.capacity(), pool.size(), pool.write_pos(), row0, n);
        CHECK(s.first_len >= 0 && s.second_len >= 0 && s.first_len + s.second_len == n);
        CHECK(s.first_slot >= 0 && s.first_slot < pool.capacity());
        CHECK(s.first_slot + s.first_len <= pool.capacity());
        for (int64_t r = 0; r < n; ++r) {
          const int64_t slot = r < s.first_len ? s.first_slot + r : r - s.first_len;
          CHECK(slot == pool.slot(row0 + r));
        }
      }
    }
  }
  // After a resize the ring restarts at slot 0 (write_pos = size when not full).
  ReplayPool pool(5, 2, 1, 0);
  for (int i = 0; i < 9; ++i) pool.add(o, a, 1.0f, o, false);
  pool.resize(8);
  const kernels::SlotSegments s = kernels::slot_segments(8, pool.size(), pool.write_pos(), 0, pool.size());
  CHECK(s.first_slot == 0 && s.first_len == 5 && s.second_len == 0);
}

TEST_CASE("device pool gather/save/load raise (never crash) without a device") {
  if (cuda_device_count() > 0) return;  // covered by the gpu tests
  CHECK_THROWS(CudaReplayPool::load("/nonexistent/pool.bin", nullptr));  // IoError first
  // A valid file: the CPU reader succeeds, then the device pool reports the missing device.
  ReplayPool cpu(4, 2, 1, 3);
  const float o[2] = {0.5f, -1.0f}, a[1] = {0.25f};
  cpu.add(o, a, 1.0f, o, true);
  const std::string path = "test_cuda_ops_pool.bin";
  cpu.save(path);
  CHECK_THROWS(CudaReplayPool::load(path, nullptr));
  std::remove(path.c_str());
}

MBPO_TEST_MAIN
