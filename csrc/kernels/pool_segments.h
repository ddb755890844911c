// Index math of the replay pool's ring buffer shared by the CPU pool's layout
// (csrc/include/mbpo_fast/replay_pool.h) and the device pool's bulk copies
// (csrc/cuda/replay_pool.cu: save/load through the host): logical row r (0 = oldest) of a
// ring with `capacity` slots holding `size` rows whose next write goes to `write_pos` lives
// in physical slot (write_pos - size + r) mod capacity, so logical rows [row0, row0 + n) are
// at most two contiguous runs of slots: [first_slot, first_slot + first_len), then
// [0, second_len). Tested on the CPU against ReplayPool::slot (tests/cpp/test_cuda_ops.cpp).
#pragma once

#include <cstdint>

#include "mbpo_fast/common.h"

namespace mbpo_fast {
namespace kernels {

struct SlotSegments {
  int64_t first_slot;  // physical slot of logical row row0
  int64_t first_len;   // rows up to the end of the storage
  int64_t second_len;  // rows continuing from slot 0 (0 when the range does not wrap)
};

// Requires 0 <= size <= capacity, 0 <= write_pos < capacity, 0 <= row0, row0 + n <= size.
MBPO_HD SlotSegments slot_segments(int64_t capacity, int64_t size, int64_t write_pos, int64_t row0, int64_t n) {
  int64_t start = write_pos - size;
  if (start < 0) start += capacity;
  int64_t first = start + row0;
  if (first >= capacity) first -= capacity;
  const int64_t to_end = capacity - first;
  const int64_t first_len = n < to_end ? n : to_end;
  return SlotSegments{first, first_len, n - first_len};
}

}  // namespace kernels
}  // namespace mbpo_fast
