// Fuzz target: the native files of a checkpoint, read together as a C++ program resumes from
// them, then used together: ReplayPool::load (real_pool.bin, model_pool.bin), Ensemble::load
// (model.safetensors), TerminationModel::load (termination_model.safetensors, when present),
// Actor::load (the agent's exported actor); the real pool grows (a resume that extends the
// run), a BranchedRollout with the learned (or a built-in) termination runs from the real pool
// into the model pool, and SAC-style batches are sampled from both. Each file alone has its own
// target; this one covers what only their combination reaches: files of other dimensions or
// from another run, which the rollout must refuse before it touches a row.
//
// Input: "MBPOCKPT", then 5 sections in that order, each a little-endian u32 byte count and
// the bytes (an empty termination section means the built-in termination). Inputs that do not
// parse as sections are split evenly, so every input reaches the readers. With libFuzzer, a
// custom mutator mutates one section at a time (as a damaged or replaced file would be).
// tests/fuzz/make_seeds.py writes the seeds from the checkpoints in corpus/checkpoint.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fuzz_target.h"
#include "mbpo_fast/actor.h"
#include "mbpo_fast/branched_rollout.h"
#include "mbpo_fast/ensemble_model.h"
#include "mbpo_fast/replay_pool.h"
#include "mbpo_fast/termination_model.h"

namespace {

constexpr int kSections = 5;
constexpr char kMagic[] = "MBPOCKPT";
using Sections = std::array<std::vector<uint8_t>, kSections>;

bool parse(const uint8_t* data, size_t size, Sections& out) {
  if (size < 8 || std::memcmp(data, kMagic, 8) != 0) return false;
  size_t pos = 8;
  for (auto& s : out) {
    if (size - pos < 4) return false;
    uint32_t n = 0;
    for (int b = 0; b < 4; ++b) n |= static_cast<uint32_t>(data[pos + b]) << (8 * b);
    pos += 4;
    if (n > size - pos) return false;
    s.assign(data + pos, data + pos + n);
    pos += n;
  }
  return true;
}

Sections split(const uint8_t* data, size_t size) {
  Sections out;
  if (parse(data, size, out)) return out;
  for (int i = 0; i < kSections; ++i) {
    out[i].assign(data + size * i / kSections, data + size * (i + 1) / kSections);
  }
  return out;
}

size_t serialize(const Sections& s, uint8_t* data, size_t max_size) {
  size_t total = 8;
  for (const auto& x : s) total += 4 + x.size();
  if (total > max_size) return 0;
  std::memcpy(data, kMagic, 8);
  size_t pos = 8;
  for (const auto& x : s) {
    const auto n = static_cast<uint32_t>(x.size());
    for (int b = 0; b < 4; ++b) data[pos++] = static_cast<uint8_t>(n >> (8 * b));
    if (n) std::memcpy(data + pos, x.data(), n);
    pos += n;
  }
  return total;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Sections sec = split(data, size);
  std::array<std::string, kSections> path;
  for (int i = 0; i < kSections; ++i) {
    path[i] = mbpo_fast_fuzz::scratch_path(i);
    mbpo_fast_fuzz::write_file(path[i], sec[i].data(), sec[i].size());
  }
  mbpo_fast_fuzz::expect_clean_rejection([&] {
    using namespace mbpo_fast;
    ReplayPool real = ReplayPool::load(path[0]);
    ReplayPool model_pool = ReplayPool::load(path[1]);
    auto model = std::make_shared<const Ensemble>(Ensemble::load(path[2]));
    std::shared_ptr<const TerminationModel> term;
    if (!sec[3].empty()) term = std::make_shared<const TerminationModel>(TerminationModel::load(path[3]));
    auto actor = std::make_shared<const Actor>(Actor::load(path[4]));
    if (real.capacity() <= 4096) real.resize(real.capacity() + 8);  // resume extends the run
    const BranchedRollout rollout = term ? BranchedRollout(model, actor, term)
                                         : BranchedRollout(model, actor, "Pendulum-v1");
    rollout.run(real, model_pool, 16, 2, 7);
    // SAC batches (real and model rows), as the first updates after a resume draw them
    const int64_t B = 8, od = real.obs_dim(), ad = real.act_dim();
    std::vector<float> obs(B * od), act(B * ad), rew(B), next(B * od);
    std::vector<uint8_t> done(B);
    real.sample(B, obs.data(), act.data(), rew.data(), next.data(), done.data());
    if (model_pool.size() > 0 && model_pool.obs_dim() == od && model_pool.act_dim() == ad) {
      model_pool.sample(B, obs.data(), act.data(), rew.data(), next.data(), done.data());
    }
  });
  return 0;
}

#ifdef MBPO_FUZZ_LIBFUZZER
extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

// Mutates one file (section) of a parsed input, like a damaged or swapped file; inputs that do
// not parse get libFuzzer's own mutations.
extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size, unsigned int seed) {
  Sections s;
  if (!parse(data, size, s)) return LLVMFuzzerMutate(data, size, max_size);
  auto& x = s[seed % kSections];
  const size_t room = max_size > size ? max_size - size : 0;
  const size_t old = x.size();
  x.resize(old + room / 2 + 1);
  x.resize(LLVMFuzzerMutate(x.data(), old, x.size()));
  const size_t n = serialize(s, data, max_size);
  return n ? n : LLVMFuzzerMutate(data, size, max_size);
}
#endif
