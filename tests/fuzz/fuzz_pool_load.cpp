// Fuzz target: ReplayPool::load on an arbitrary file; a pool it accepts must then sample
// and copy out its rows (every stored value is read).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_target.h"
#include "mbpo_fast/replay_pool.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = mbpo_fast_fuzz::write_scratch(data, size);
  mbpo_fast_fuzz::expect_clean_rejection([&] {
    mbpo_fast::ReplayPool pool = mbpo_fast::ReplayPool::load(path);
    const int64_t n = pool.size();
    if (n == 0 || n > 4096) return;  // the seeds are small; large ones only cost time
    const int64_t od = pool.obs_dim(), ad = pool.act_dim();
    if (od > 64 || ad > 64) return;
    std::vector<float> obs(n * od), act(n * ad), rew(n), next(n * od);
    std::vector<uint8_t> term(n);
    pool.transitions(obs.data(), act.data(), rew.data(), next.data(), term.data());
    pool.sample(n, obs.data(), act.data(), rew.data(), next.data(), term.data());
  });
  return 0;
}
