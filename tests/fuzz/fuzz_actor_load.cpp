// Fuzz target: Actor::load (the file SAC.export_actor writes) on an arbitrary file; an
// actor it accepts must then act, stochastically and deterministically, on a small batch.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_target.h"
#include "mbpo_fast/actor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = mbpo_fast_fuzz::write_scratch(data, size);
  mbpo_fast_fuzz::expect_clean_rejection([&] {
    const mbpo_fast::Actor a = mbpo_fast::Actor::load(path);
    const int64_t B = 3, od = a.obs_dim(), ad = a.act_dim();
    std::vector<float> obs(B * od), act(B * ad), logp(B);
    for (size_t i = 0; i < obs.size(); ++i) obs[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
    a.act(obs.data(), B, 11, 0, false, act.data(), logp.data());
    a.act(obs.data(), B, 11, 0, true, act.data(), nullptr);
  });
  return 0;
}
