// Every stored row of a ReplayPool, oldest first, for comparing two pools exactly in tests.
#pragma once

#include <cstdint>
#include <vector>

#include "mbpo_fast/replay_pool.h"

namespace mbpo_fast_test {

struct PoolContents {
  std::vector<float> obs, act, rew, next;
  std::vector<uint8_t> term;
  explicit PoolContents(const mbpo_fast::ReplayPool& p)
      : obs(static_cast<size_t>(p.size() * p.obs_dim())),
        act(static_cast<size_t>(p.size() * p.act_dim())),
        rew(static_cast<size_t>(p.size())),
        next(static_cast<size_t>(p.size() * p.obs_dim())),
        term(static_cast<size_t>(p.size())) {
    p.transitions(obs.data(), act.data(), rew.data(), next.data(), term.data());
  }
  bool operator==(const PoolContents& o) const {
    return obs == o.obs && act == o.act && rew == o.rew && next == o.next && term == o.term;
  }
  bool operator!=(const PoolContents& o) const { return !(*this == o); }
};

}  // namespace mbpo_fast_test
