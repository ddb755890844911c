// ReplayPool: a fixed-capacity FIFO ring buffer of transitions that owns its memory.
//
// Storage is two preallocated, contiguous, aligned arrays and nothing else:
//   records[capacity, 2 * obs_dim + act_dim + 1] float32, one record per row holding
//     obs (obs_dim), act (act_dim), rew (1), next_obs (obs_dim) side by side;
//   terminated[capacity] uint8 (0 or 1);
// i.e. nbytes() == capacity * (4 * (2 * obs_dim + act_dim + 1) + 1), the same bytes as five
// separate field arrays. The record layout is for sampling: a random row is one record
// (~2.6 cache lines, one page) instead of ~6 lines in four arrays, which measured
// 1.3-4x faster gathers from a 1e6-row pool on the 2-core VM. Arrays of 4 MB or more are
// 2 MB-aligned and advised as transparent huge pages (as numpy does) for fewer TLB misses.
//
// Rows are addressed LOGICALLY: row 0 is the oldest stored row, row size()-1 the newest.
// (Physically, row r lives in slot (write_pos - size + r) mod capacity.)
//
// Sampling is uniform with replacement and deterministic: draw k of the pool's life is
//   row = random_index(seed, kStreamPoolSample, rng_counter + k, size())   (rng.h)
// and every sample of n rows advances rng_counter by n. The RNG state is therefore just
// (seed, rng_counter); both are saved, so a loaded pool continues the exact sequence.
// The Numba mirror (mbpo_fast/_numba/pool.py) implements the same formula.
//
// Use from C++ (no Python needed), e.g. a simulator or the branched-rollout engine
// appending model transitions:
//
//   mbpo_fast::ReplayPool pool(1'000'000, 11, 3, /*seed=*/0);
//   pool.add_batch(obs, act, rew, next_obs, term, n);        // raw row-major pointers
//   pool.sample(256, obs_out, act_out, rew_out, next_out, term_out);
//   pool.save("pool.bin");  auto copy = mbpo_fast::ReplayPool::load("pool.bin");
//
// Errors: invalid arguments (sizes, non-finite values, terminated not 0/1, empty pool)
// throw InvalidArgument before anything is modified; I/O failures throw IoError; bad
// files throw FormatError (common.h). Not thread-safe: callers serialize access to one
// pool (the Python binding holds a per-pool mutex); distinct pools are independent.
//
// File format (little-endian), identical from every backend:
//   0  char[8]  magic "MBPOPOOL"        8  uint32 version (1)   12 uint32 reserved (0)
//   16 int64 capacity  24 int64 obs_dim  32 int64 act_dim  40 int64 size
//   48 int64 write_pos 56 uint64 seed    64 uint64 rng_counter
//   72 uint32 CRC-32 of bytes [0, 72)    76 uint32 reserved (0)
//   80 data, rows oldest first: obs[size,obs_dim] f32, act[size,act_dim] f32, rew[size] f32,
//      next_obs[size,obs_dim] f32, terminated[size] u8
//   end-4 uint32 CRC-32 (IEEE, = zlib.crc32) of every preceding byte.
// The header CRC lets a corrupted capacity be rejected before any allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "mbpo_fast/common.h"

namespace mbpo_fast {

class CudaReplayPool;  // cuda_ops.h: builds/reads a ReplayPool for its save and load

namespace pool_detail {
// Frees memory from ::operator new(bytes, align_val_t{align}).
struct AlignedFree {
  size_t align = 64;
  void operator()(void* p) const noexcept;
};
}  // namespace pool_detail

class ReplayPool {
 public:
  static constexpr char kMagic[9] = "MBPOPOOL";
  static constexpr uint32_t kVersion = 1;
  static constexpr int64_t kHeaderBytes = 80;

  // capacity, obs_dim, act_dim >= 1 (InvalidArgument otherwise). Storage is allocated
  // once here (and again only by resize()).
  ReplayPool(int64_t capacity, int64_t obs_dim, int64_t act_dim, uint64_t seed = 0);

  ReplayPool(ReplayPool&&) noexcept = default;
  ReplayPool& operator=(ReplayPool&&) noexcept = default;
  ReplayPool(const ReplayPool&) = delete;  // a pool can be large: copies must be explicit
  ReplayPool& operator=(const ReplayPool&) = delete;

  int64_t size() const noexcept { return size_; }
  int64_t capacity() const noexcept { return capacity_; }
  int64_t obs_dim() const noexcept { return obs_dim_; }
  int64_t act_dim() const noexcept { return act_dim_; }
  // Slot the next row is written to.
  int64_t write_pos() const noexcept { return write_pos_; }
  uint64_t seed() const noexcept { return seed_; }
  // Number of rows drawn so far (the Philox counter of the next draw).
  uint64_t rng_counter() const noexcept { return rng_counter_; }
  // Bytes of row storage: capacity * row_bytes().
  int64_t nbytes() const noexcept { return capacity_ * row_bytes(); }
  int64_t row_bytes() const noexcept { return 4 * (2 * obs_dim_ + act_dim_ + 1) + 1; }

  // Appends one transition: obs[obs_dim], act[act_dim], next_obs[obs_dim].
  void add(const float* obs, const float* act, float rew, const float* next_obs, bool terminated);

  // Appends n >= 0 rows (row-major [n, dim] arrays; term values 0 or 1). Every value is
  // checked (finite floats, term <= 1) before anything is written, so a failing call leaves
  // the pool unchanged. n > capacity: only the last `capacity` rows are kept.
  void add_batch(const float* obs, const float* act, const float* rew, const float* next_obs,
                 const uint8_t* term, int64_t n);

  // Draws n >= 0 rows uniformly with replacement (rng_counter += n) into row-major outputs.
  // Throws InvalidArgument when n > 0 and the pool is empty. Any output may be nullptr
  // (that field is skipped; the draws are the same).
  void sample(int64_t n, float* obs, float* act, float* rew, float* next_obs, uint8_t* term);

  // Like sample() but copies obs only (rollout start states).
  void sample_obs(int64_t n, float* obs) { sample(n, obs, nullptr, nullptr, nullptr, nullptr); }

  // The logical rows that the next n draws would return, without advancing rng_counter.
  void peek_indices(int64_t n, int64_t* rows) const;

  // Copies logical rows rows[0..n) (each in [0, size()), else InvalidArgument before any
  // copy). Const: safe to call concurrently with other const calls.
  void gather(const int64_t* rows, int64_t n, float* obs, float* act, float* rew, float* next_obs,
              uint8_t* term) const;

  // Copies logical rows [first_row, first_row + n) (InvalidArgument when outside
  // [0, size())) into row-major outputs; any output may be nullptr.
  void copy_rows(int64_t first_row, int64_t n, float* obs, float* act, float* rew, float* next_obs,
                 uint8_t* term) const;

  // Copies every stored row, oldest first (outputs sized [size(), dim]).
  void transitions(float* obs, float* act, float* rew, float* next_obs, uint8_t* term) const {
    copy_rows(0, size_, obs, act, rew, next_obs, term);
  }

  // Changes the capacity (>= 1), keeping the newest min(size, new_capacity) rows in order
  // (laid out from slot 0). Keeps seed and rng_counter. Strong guarantee: on bad_alloc the
  // pool is unchanged.
  void resize(int64_t new_capacity);

  // Forgets every row (size = write_pos = 0); keeps capacity, seed and rng_counter.
  void clear() noexcept;

  // Writes the pool atomically (temporary file in the same directory, fsync, rename,
  // fsync of the directory). IoError on failure; the previous file stays intact.
  void save(const std::string& path) const;

  // Reads a file written by save() (either backend). IoError when it cannot be read,
  // FormatError when it is truncated, corrupted or not a pool file.
  static ReplayPool load(const std::string& path);

  // Physical slot of logical row r (0 <= r < size()).
  int64_t slot(int64_t r) const noexcept {
    int64_t p = start_slot() + r;
    return p >= capacity_ ? p - capacity_ : p;
  }
  // Raw storage for zero-copy readers in C++: physical slot s holds the record
  // record_data() + s * record_floats() = [obs (obs_dim), act (act_dim), rew, next_obs
  // (obs_dim)] and terminated_data()[s]; see slot().
  int64_t record_floats() const noexcept { return 2 * obs_dim_ + act_dim_ + 1; }
  const float* record_data() const noexcept { return rec_.get(); }
  const uint8_t* terminated_data() const noexcept { return term_.get(); }

 private:
  template <typename T>
  using Buffer = std::unique_ptr<T[], pool_detail::AlignedFree>;
  template <typename T>
  static Buffer<T> allocate(int64_t count);

  int64_t start_slot() const noexcept {
    const int64_t s = write_pos_ - size_;
    return s < 0 ? s + capacity_ : s;
  }
  // Copies n input rows into the records of slots slot0 .. slot0+n-1 (null fields skipped).
  void pack_rows(int64_t slot0, int64_t n, const float* obs, const float* act, const float* rew,
                 const float* next_obs);
  // Copies the records of slots slot0 .. slot0+n-1 into row-major outputs (null skipped).
  void unpack_rows(int64_t slot0, int64_t n, float* obs, float* act, float* rew,
                   float* next_obs) const;
  void check_rows(const float* obs, const float* act, const float* rew, const float* next_obs,
                  const uint8_t* term, int64_t n) const;

  // The device pool's to_host fills the storage and the ring state directly (same layout).
  friend class CudaReplayPool;
  friend void sample_mixed(ReplayPool& real, ReplayPool& model, int64_t batch_size,
                           double real_ratio, int64_t num_batches, float* obs, float* act,
                           float* rew, float* next_obs, uint8_t* term);

  int64_t capacity_, obs_dim_, act_dim_;
  int64_t size_ = 0;
  int64_t write_pos_ = 0;
  uint64_t seed_;
  uint64_t rng_counter_ = 0;
  Buffer<float> rec_;  // capacity records of record_floats() floats
  Buffer<uint8_t> term_;
};

// Fills batches mixing two pools: each of num_batches batches of batch_size rows holds
// n_real = floor(batch_size * real_ratio) rows drawn from `real` first, then
// batch_size - n_real rows drawn from `model`. Equivalent to num_batches successive
// single-batch calls; each pool advances its own counter (by num_batches * its share).
// Outputs are row-major [num_batches * batch_size, dim]. real_ratio in [0, 1]; a pool
// that must supply rows must be non-empty; both pools must have the same dims.
// `real` and `model` may be the same pool.
void sample_mixed(ReplayPool& real, ReplayPool& model, int64_t batch_size, double real_ratio,
                  int64_t num_batches, float* obs, float* act, float* rew, float* next_obs,
                  uint8_t* term);

// Rows of each batch that sample_mixed draws from `real` (validates batch_size, real_ratio).
int64_t mixed_real_rows(int64_t batch_size, double real_ratio);

}  // namespace mbpo_fast
