// Fuzz target: Ensemble::load (the safetensors layout EnsembleDynamics.save writes) on an
// arbitrary file; a model it accepts must then step, predict and measure disagreement on
// a small batch (the loaded shapes drive all pointer arithmetic there).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_target.h"
#include "mbpo_fast/ensemble_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = mbpo_fast_fuzz::write_scratch(data, size);
  mbpo_fast_fuzz::expect_clean_rejection([&] {
    const mbpo_fast::Ensemble m = mbpo_fast::Ensemble::load(path);
    const int64_t B = 3, od = m.obs_dim(), ad = m.act_dim(), E = m.ensemble_size();
    std::vector<float> obs(B * od), act(B * ad), next(B * od), rew(B), dis(B);
    for (size_t i = 0; i < obs.size(); ++i) obs[i] = 0.1f * static_cast<float>(i % 7) - 0.3f;
    for (size_t i = 0; i < act.size(); ++i) act[i] = 0.2f * static_cast<float>(i % 5) - 0.4f;
    m.step(obs.data(), act.data(), B, 7, false, nullptr, next.data(), rew.data());
    std::vector<float> mean(E * B * (od + 1)), var(E * B * (od + 1));
    m.predict(obs.data(), act.data(), B, mean.data(), var.data());
    m.disagreement(obs.data(), act.data(), B, nullptr, 0, dis.data());
  });
  return 0;
}
