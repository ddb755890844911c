// ReplayPool implementation: ring-buffer writes, Philox-indexed gathers, atomic save/load.
#include "mbpo_fast/replay_pool.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <utility>

#include "mbpo_fast/crc32.h"
#include "mbpo_fast/parallel.h"
#include "mbpo_fast/rng.h"

namespace mbpo_fast {

constexpr char ReplayPool::kMagic[9];

namespace {

constexpr size_t kAlign = 64;
// Arrays this large get 2 MB alignment and MADV_HUGEPAGE (numpy does the same for its
// large arrays): sampling touches rows scattered over ~100 MB, and with 4 KB pages
// nearly every row costs a TLB miss and a page walk.
constexpr size_t kHugePage = size_t{2} << 20;
constexpr size_t kHugeThreshold = size_t{4} << 20;
// Indices are drawn and gathered in chunks this long (stack buffer, stays in L1).
constexpr int64_t kChunk = 256;
// Samples and finiteness checks larger than this are split over the thread pool.
constexpr int64_t kParallelRows = 16384;
constexpr int64_t kParallelFloats = 1 << 20;
// Rows per chunk when save/load convert between records and the file's field sections.
constexpr int64_t kFileChunk = 16384;
// random_index works on 32-bit ranges.
constexpr int64_t kMaxCapacity = (int64_t{1} << 32) - 1;
constexpr int64_t kMaxDim = int64_t{1} << 24;

// Index of the first non-finite value in p[0..n), or -1. Branch-free over blocks so the
// compiler vectorizes it (an isfinite loop with an early exit stays scalar): a float is
// non-finite exactly when its 8 exponent bits are all ones.
int64_t first_nonfinite(const float* p, int64_t n) {
  constexpr int64_t kBlock = 1024;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    uint32_t bad = 0;
    for (int64_t i = b; i < e; ++i) {
      uint32_t bits;
      std::memcpy(&bits, p + i, 4);
      bad |= static_cast<uint32_t>((bits & 0x7F800000u) == 0x7F800000u);
    }
    if (bad) {
      for (int64_t i = b; i < e; ++i) {
        uint32_t bits;
        std::memcpy(&bits, p + i, 4);
        if ((bits & 0x7F800000u) == 0x7F800000u) return i;
      }
    }
  }
  return -1;
}

// Same over a large array, threaded; returns the smallest bad index or -1.
int64_t first_nonfinite_parallel(const float* p, int64_t n) {
  if (n < kParallelFloats) return first_nonfinite(p, n);
  const int64_t chunks = (n + kParallelFloats - 1) / kParallelFloats;
  std::unique_ptr<int64_t[]> found(new int64_t[chunks]);
  parallel_for(chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const int64_t lo = c * kParallelFloats;
      const int64_t r = first_nonfinite(p + lo, std::min(kParallelFloats, n - lo));
      found[c] = r < 0 ? -1 : lo + r;
    }
  });
  for (int64_t c = 0; c < chunks; ++c)
    if (found[c] >= 0) return found[c];
  return -1;
}

void require_finite_rows(const float* p, int64_t n_rows, int64_t dim, const char* name) {
  if (n_rows == 0) return;
  const int64_t i = first_nonfinite_parallel(p, n_rows * dim);
  if (i >= 0) {
    throw InvalidArgument(std::string(name) + ": non-finite value (NaN or Inf) in row " +
                          std::to_string(i / dim) + " (values must be finite)");
  }
}

// Logical rows of draws first .. first+n-1: one Philox block serves 4 consecutive draws.
// Identical to random_index(seed, kStreamPoolSample, first + j, size) for each j.
void draw_rows(uint64_t seed, uint64_t first, int64_t n, uint32_t size, int64_t* out) {
  int64_t j = 0;
  uint64_t idx = first;
  while (j < n) {
    const Philox4x32 b = philox_block(seed, kStreamPoolSample, idx >> 2);
    for (uint32_t lane = static_cast<uint32_t>(idx & 3u); lane < 4 && j < n; ++lane, ++j, ++idx) {
      out[j] = bounded_u32(b.v[lane], size);
    }
  }
}

// Copies one row of `dim` floats. Rows are short (Hopper: 11 and 3 floats), so a
// libc memcpy call per row would dominate; two overlapping fixed-size copies compile to a
// pair of vector loads and stores.
inline void copy_row(float* dst, const float* src, int64_t dim) {
  const size_t n = static_cast<size_t>(dim) * sizeof(float);
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  if (n >= 32 && n <= 64) {
    std::memcpy(d, s, 32);
    std::memcpy(d + n - 32, s + n - 32, 32);
  } else if (n >= 16 && n < 32) {
    std::memcpy(d, s, 16);
    std::memcpy(d + n - 16, s + n - 16, 16);
  } else if (n >= 8 && n < 16) {
    std::memcpy(d, s, 8);
    std::memcpy(d + n - 8, s + n - 8, 8);
  } else {
    std::memcpy(d, s, n);
  }
}

struct Outputs {
  float *obs, *act, *rew, *next_obs;
  uint8_t* term;
  // The same outputs advanced by `rows` rows.
  Outputs at(int64_t rows, int64_t od, int64_t ad) const {
    return {obs ? obs + rows * od : nullptr, act ? act + rows * ad : nullptr,
            rew ? rew + rows : nullptr, next_obs ? next_obs + rows * od : nullptr,
            term ? term + rows : nullptr};
  }
};

// Copies physical slots[0..n) into the requested outputs. Rows are scattered over up to
// ~100 MB, so every row is a cache miss: one record per row (obs, act, rew, next_obs
// adjacent) touches ~2.6 cache lines and one page instead of ~6 lines in four arrays, and
// the loads of different rows are independent, so the core overlaps them.
template <typename Pool>
void gather_slots(const Pool& pool, const int64_t* slots, int64_t n, const Outputs& o) {
  const int64_t od = pool.obs_dim(), ad = pool.act_dim(), rf = pool.record_floats();
  const float* rec = pool.record_data();
  const uint8_t* term = pool.terminated_data();
  for (int64_t i = 0; i < n; ++i) {
    const float* r = rec + slots[i] * rf;
    if (o.obs) copy_row(o.obs + i * od, r, od);
    if (o.act) copy_row(o.act + i * ad, r + od, ad);
    if (o.rew) o.rew[i] = r[od + ad];
    if (o.next_obs) copy_row(o.next_obs + i * od, r + od + ad + 1, od);
    if (o.term) o.term[i] = term[slots[i]];
  }
}

std::string errno_text() { return std::strerror(errno); }

// Writes all of [p, p+n) to fd, updating the running CRC.
void write_all(int fd, const void* p, size_t n, uint32_t& crc, const std::string& path) {
  crc = crc32(p, n, crc);
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t w = ::write(fd, c, std::min<size_t>(n, size_t{1} << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError("ReplayPool.save: cannot write " + path + ": " + errno_text());
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

// Reads exactly n bytes into p (the caller checked the file size first).
void read_all(int fd, void* p, size_t n, uint32_t& crc, const std::string& path) {
  char* c = static_cast<char*>(p);
  const size_t total = n;
  while (n > 0) {
    const ssize_t r = ::read(fd, c, std::min<size_t>(n, size_t{1} << 30));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw IoError("ReplayPool.load: cannot read " + path + ": " + errno_text());
    }
    if (r == 0)
      throw FormatError("ReplayPool.load: " + path + " is truncated (unexpected end of file)");
    c += r;
    n -= static_cast<size_t>(r);
  }
  crc = crc32(p, total, crc);
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

template <typename T>
void put(unsigned char* buf, size_t offset, T v) {
  std::memcpy(buf + offset, &v, sizeof(T));  // little-endian hosts
}
template <typename T>
T get(const unsigned char* buf, size_t offset) {
  T v;
  std::memcpy(&v, buf + offset, sizeof(T));
  return v;
}

}  // namespace

// ------------------------------------------------------------------ storage

void pool_detail::AlignedFree::operator()(void* p) const noexcept {
  ::operator delete(p, std::align_val_t{align});
}

template <typename T>
ReplayPool::Buffer<T> ReplayPool::allocate(int64_t count) {
  // Uninitialized on purpose: untouched pages are never committed, and rows are always
  // written before they are read.
  const size_t bytes = static_cast<size_t>(count) * sizeof(T);
  const size_t align = bytes >= kHugeThreshold ? kHugePage : kAlign;
  // The nothrow form, so that a refused allocation is a bad_alloc the caller can handle in
  // every build (AddressSanitizer aborts inside a throwing operator new instead).
  void* p = ::operator new(bytes, std::align_val_t{align}, std::nothrow);
  if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (align == kHugePage)
    (void)::madvise(p, bytes / kHugePage * kHugePage, MADV_HUGEPAGE);  // a hint
#endif
  return Buffer<T>(static_cast<T*>(p), pool_detail::AlignedFree{align});
}

ReplayPool::ReplayPool(int64_t capacity, int64_t obs_dim, int64_t act_dim, uint64_t seed)
    : capacity_(capacity), obs_dim_(obs_dim), act_dim_(act_dim), seed_(seed) {
  if (!(capacity >= 1 && capacity <= kMaxCapacity))
    throw InvalidArgument("capacity: expected 1 <= capacity < 2**32, got " +
                          std::to_string(capacity));
  if (!(obs_dim >= 1 && obs_dim <= kMaxDim))
    throw InvalidArgument("obs_dim: expected 1 <= obs_dim <= 2**24, got " +
                          std::to_string(obs_dim));
  if (!(act_dim >= 1 && act_dim <= kMaxDim))
    throw InvalidArgument("act_dim: expected 1 <= act_dim <= 2**24, got " +
                          std::to_string(act_dim));
  rec_ = allocate<float>(capacity * record_floats());
  term_ = allocate<uint8_t>(capacity);
}

// ------------------------------------------------------------------ record packing

void ReplayPool::pack_rows(int64_t slot0, int64_t n, const float* obs, const float* act,
                           const float* rew, const float* next_obs) {
  const int64_t od = obs_dim_, ad = act_dim_, rf = record_floats();
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      float* r = rec_.get() + (slot0 + i) * rf;
      if (obs) copy_row(r, obs + i * od, od);
      if (act) copy_row(r + od, act + i * ad, ad);
      if (rew) r[od + ad] = rew[i];
      if (next_obs) copy_row(r + od + ad + 1, next_obs + i * od, od);
    }
  };
  if (n >= kParallelRows) {
    parallel_for(n, kParallelRows, body);
  } else {
    body(0, n);
  }
}

void ReplayPool::unpack_rows(int64_t slot0, int64_t n, float* obs, float* act, float* rew,
                             float* next_obs) const {
  const int64_t od = obs_dim_, ad = act_dim_, rf = record_floats();
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* r = rec_.get() + (slot0 + i) * rf;
      if (obs) copy_row(obs + i * od, r, od);
      if (act) copy_row(act + i * ad, r + od, ad);
      if (rew) rew[i] = r[od + ad];
      if (next_obs) copy_row(next_obs + i * od, r + od + ad + 1, od);
    }
  };
  if (n >= kParallelRows) {
    parallel_for(n, kParallelRows, body);
  } else {
    body(0, n);
  }
}

// ------------------------------------------------------------------ writes

void ReplayPool::check_rows(const float* obs, const float* act, const float* rew,
                            const float* next_obs, const uint8_t* term, int64_t n) const {
  require_finite_rows(obs, n, obs_dim_, "obs");
  require_finite_rows(act, n, act_dim_, "act");
  require_finite_rows(rew, n, 1, "rew");
  require_finite_rows(next_obs, n, obs_dim_, "next_obs");
  uint8_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= static_cast<uint8_t>(term[i] > 1);
  if (bad) {
    for (int64_t i = 0; i < n; ++i) {
      if (!(term[i] <= 1))
        throw InvalidArgument("terminated: expected 0 or 1, got " + std::to_string(term[i]) +
                              " in row " + std::to_string(i));
    }
  }
}

void ReplayPool::add(const float* obs, const float* act, float rew, const float* next_obs,
                     bool terminated) {
  const uint8_t t = terminated ? 1 : 0;
  check_rows(obs, act, &rew, next_obs, &t, 1);
  const int64_t w = write_pos_;
  float* r = rec_.get() + w * record_floats();
  std::memcpy(r, obs, sizeof(float) * obs_dim_);
  std::memcpy(r + obs_dim_, act, sizeof(float) * act_dim_);
  r[obs_dim_ + act_dim_] = rew;
  std::memcpy(r + obs_dim_ + act_dim_ + 1, next_obs, sizeof(float) * obs_dim_);
  term_[w] = t;
  write_pos_ = w + 1 == capacity_ ? 0 : w + 1;
  if (size_ < capacity_) ++size_;
}

void ReplayPool::add_batch(const float* obs, const float* act, const float* rew,
                           const float* next_obs, const uint8_t* term, int64_t n) {
  if (!(n >= 0)) throw InvalidArgument("add_batch: expected n >= 0 rows, got " + std::to_string(n));
  if (n == 0) return;
  check_rows(obs, act, rew, next_obs, term, n);
  // Only the last `capacity` rows survive; row i of the batch goes to slot (w + i) % cap.
  const int64_t skip = n > capacity_ ? n - capacity_ : 0;
  const int64_t m = n - skip;
  const int64_t start = (write_pos_ + skip) % capacity_;
  const int64_t first = std::min(m, capacity_ - start);  // rows before the wrap
  const int64_t od = obs_dim_, ad = act_dim_;
  obs += skip * od;
  act += skip * ad;
  rew += skip;
  next_obs += skip * od;
  term += skip;
  pack_rows(start, first, obs, act, rew, next_obs);
  std::memcpy(term_.get() + start, term, first);
  if (m > first) {
    pack_rows(0, m - first, obs + first * od, act + first * ad, rew + first, next_obs + first * od);
    std::memcpy(term_.get(), term + first, m - first);
  }
  write_pos_ = (write_pos_ + n) % capacity_;
  size_ = std::min(capacity_, size_ + n);
}

void ReplayPool::clear() noexcept {
  size_ = 0;
  write_pos_ = 0;
}

void ReplayPool::resize(int64_t new_capacity) {
  if (!(new_capacity >= 1 && new_capacity <= kMaxCapacity))
    throw InvalidArgument("new_capacity: expected 1 <= new_capacity < 2**32, got " +
                          std::to_string(new_capacity));
  // Allocate everything first: bad_alloc leaves the pool as it was.
  const int64_t rf = record_floats();
  auto rec = allocate<float>(new_capacity * rf);
  auto term = allocate<uint8_t>(new_capacity);
  const int64_t keep = std::min(size_, new_capacity);
  if (keep > 0) {  // the newest rows: at most two contiguous segments of whole records
    const int64_t start = slot(size_ - keep);
    const int64_t first = std::min(keep, capacity_ - start);
    std::memcpy(rec.get(), rec_.get() + start * rf, sizeof(float) * first * rf);
    std::memcpy(term.get(), term_.get() + start, first);
    if (keep > first) {
      std::memcpy(rec.get() + first * rf, rec_.get(), sizeof(float) * (keep - first) * rf);
      std::memcpy(term.get() + first, term_.get(), keep - first);
    }
  }
  rec_ = std::move(rec);
  term_ = std::move(term);
  capacity_ = new_capacity;
  size_ = keep;
  write_pos_ = keep % new_capacity;
}

// ------------------------------------------------------------------ reads

void ReplayPool::peek_indices(int64_t n, int64_t* rows) const {
  if (!(n >= 0)) throw InvalidArgument("n: expected n >= 0, got " + std::to_string(n));
  if (!(n == 0 || size_ > 0))
    throw InvalidArgument("sample: the pool is empty (add transitions before sampling)");
  draw_rows(seed_, rng_counter_, n, static_cast<uint32_t>(size_), rows);
}

namespace {

// Draws n rows of `pool` starting at draw `first` into `out` (row offset 0), threaded
// for large n. Each thread draws its own range: draws are a pure function of the index.
void sample_into(const ReplayPool& pool, uint64_t first, int64_t n, const Outputs& out) {
  const int64_t od = pool.obs_dim(), ad = pool.act_dim();
  const uint32_t size = static_cast<uint32_t>(pool.size());
  auto body = [&](int64_t begin, int64_t end) {
    int64_t slots[kChunk];
    for (int64_t c = begin; c < end; c += kChunk) {
      const int64_t len = std::min(kChunk, end - c);
      draw_rows(pool.seed(), first + static_cast<uint64_t>(c), len, size, slots);
      for (int64_t i = 0; i < len; ++i) slots[i] = pool.slot(slots[i]);
      gather_slots(pool, slots, len, out.at(c, od, ad));
    }
  };
  if (n >= kParallelRows) {
    parallel_for((n + kChunk - 1) / kChunk, kParallelRows / kChunk / 2,
                 [&](int64_t b, int64_t e) { body(b * kChunk, std::min(n, e * kChunk)); });
  } else {
    body(0, n);
  }
}

}  // namespace

void ReplayPool::sample(int64_t n, float* obs, float* act, float* rew, float* next_obs,
                        uint8_t* term) {
  if (!(n >= 0))
    throw InvalidArgument("batch_size: expected batch_size >= 0, got " + std::to_string(n));
  if (n == 0) return;
  if (!(size_ > 0))
    throw InvalidArgument("sample: the pool is empty (add transitions before sampling)");
  sample_into(*this, rng_counter_, n, Outputs{obs, act, rew, next_obs, term});
  rng_counter_ += static_cast<uint64_t>(n);
}

void ReplayPool::gather(const int64_t* rows, int64_t n, float* obs, float* act, float* rew,
                        float* next_obs, uint8_t* term) const {
  if (!(n >= 0)) throw InvalidArgument("n: expected n >= 0, got " + std::to_string(n));
  for (int64_t i = 0; i < n; ++i) {
    if (!(rows[i] >= 0 && rows[i] < size_))
      throw InvalidArgument("rows: expected row indices in [0, " + std::to_string(size_) +
                            "), got " + std::to_string(rows[i]) + " at position " +
                            std::to_string(i));
  }
  int64_t slots[kChunk];
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t len = std::min(kChunk, n - c);
    for (int64_t i = 0; i < len; ++i) slots[i] = slot(rows[c + i]);
    gather_slots(*this, slots, len,
                 Outputs{obs, act, rew, next_obs, term}.at(c, obs_dim_, act_dim_));
  }
}

void ReplayPool::copy_rows(int64_t first_row, int64_t n, float* obs, float* act, float* rew,
                           float* next_obs, uint8_t* term) const {
  if (first_row < 0 || n < 0 || first_row > size_ - n) {
    throw InvalidArgument("copy_rows: rows [" + std::to_string(first_row) + ", " +
                          std::to_string(first_row + n) + ") are not within [0, " +
                          std::to_string(size_) + ")");
  }
  if (n == 0) return;
  // At most two contiguous segments: up to the end of the storage, then from slot 0.
  const int64_t start = slot(first_row);
  const int64_t first = std::min(n, capacity_ - start);
  unpack_rows(start, first, obs, act, rew, next_obs);
  if (term) std::memcpy(term, term_.get() + start, first);
  if (n > first) {
    const Outputs o = Outputs{obs, act, rew, next_obs, term}.at(first, obs_dim_, act_dim_);
    unpack_rows(0, n - first, o.obs, o.act, o.rew, o.next_obs);
    if (term) std::memcpy(o.term, term_.get(), n - first);
  }
}

// ------------------------------------------------------------------ mixed batches

int64_t mixed_real_rows(int64_t batch_size, double real_ratio) {
  if (!(batch_size >= 1))
    throw InvalidArgument("batch_size: expected batch_size >= 1, got " +
                          std::to_string(batch_size));
  if (!(real_ratio >= 0.0 && real_ratio <= 1.0))
    throw InvalidArgument(  // false for NaN too
        "real_ratio: expected a value in [0, 1], got " + std::to_string(real_ratio));
  // The same double product and truncation as Python's int(batch_size * real_ratio).
  return static_cast<int64_t>(static_cast<double>(batch_size) * real_ratio);
}

void sample_mixed(ReplayPool& real, ReplayPool& model, int64_t batch_size, double real_ratio,
                  int64_t num_batches, float* obs, float* act, float* rew, float* next_obs,
                  uint8_t* term) {
  const int64_t n_real = mixed_real_rows(batch_size, real_ratio);
  const int64_t n_model = batch_size - n_real;
  if (!(num_batches >= 1))
    throw InvalidArgument("num_batches: expected num_batches >= 1, got " +
                          std::to_string(num_batches));
  if (!(real.obs_dim() == model.obs_dim() && real.act_dim() == model.act_dim()))
    throw InvalidArgument("model_pool: expected obs_dim " + std::to_string(real.obs_dim()) +
                          " and act_dim " + std::to_string(real.act_dim()) +
                          " like real_pool, got " + std::to_string(model.obs_dim()) + " and " +
                          std::to_string(model.act_dim()));
  if (!(n_real == 0 || real.size() > 0))
    throw InvalidArgument("real_pool: the pool is empty but real_ratio asks for " +
                          std::to_string(n_real) + " rows per batch");
  if (!(n_model == 0 || model.size() > 0))
    throw InvalidArgument("model_pool: the pool is empty but real_ratio leaves " +
                          std::to_string(n_model) + " rows per batch to it");
  const bool same = &real == &model;
  // Draw offsets of batch k, as if num_batches single-batch calls ran one after another.
  const uint64_t real0 = real.rng_counter(), model0 = model.rng_counter();
  auto real_first = [&](int64_t k) {
    return real0 + static_cast<uint64_t>(k * (same ? batch_size : n_real));
  };
  auto model_first = [&](int64_t k) {
    return same ? real0 + static_cast<uint64_t>(k * batch_size + n_real)
                : model0 + static_cast<uint64_t>(k * n_model);
  };
  const Outputs out{obs, act, rew, next_obs, term};
  const int64_t od = real.obs_dim(), ad = real.act_dim();
  auto body = [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      if (n_real) sample_into(real, real_first(k), n_real, out.at(k * batch_size, od, ad));
      if (n_model)
        sample_into(model, model_first(k), n_model, out.at(k * batch_size + n_real, od, ad));
    }
  };
  if (num_batches * batch_size >= kParallelRows && num_batches > 1) {
    parallel_for(num_batches, std::max<int64_t>(1, kParallelRows / 2 / batch_size), body);
  } else {
    body(0, num_batches);
  }
  // Counters advance only after every draw succeeded.
  real.rng_counter_ += static_cast<uint64_t>(num_batches * (same ? batch_size : n_real));
  if (!same) model.rng_counter_ += static_cast<uint64_t>(num_batches * n_model);
}

// ------------------------------------------------------------------ files

void ReplayPool::save(const std::string& path) const {
  unsigned char header[kHeaderBytes] = {};
  std::memcpy(header, kMagic, 8);
  put<uint32_t>(header, 8, kVersion);
  put<int64_t>(header, 16, capacity_);
  put<int64_t>(header, 24, obs_dim_);
  put<int64_t>(header, 32, act_dim_);
  put<int64_t>(header, 40, size_);
  put<int64_t>(header, 48, write_pos_);
  put<uint64_t>(header, 56, seed_);
  put<uint64_t>(header, 64, rng_counter_);
  put<uint32_t>(header, 72, crc32(header, 72));

  std::string tmp = path + ".tmp.XXXXXX";
  Fd file;
  file.fd = ::mkstemp(&tmp[0]);
  if (file.fd < 0)
    throw IoError("ReplayPool.save: cannot create a temporary file next to " + path + ": " +
                  errno_text());
  try {
    uint32_t crc = 0;
    write_all(file.fd, header, sizeof(header), crc, path);
    // Field by field, rows oldest first, unpacked from the records in chunks.
    std::unique_ptr<float[]> buf(new float[kFileChunk * obs_dim_ + kFileChunk * act_dim_]);
    for (int field = 0; field < 4; ++field) {
      const int64_t dim = field == 0 || field == 3 ? obs_dim_ : (field == 1 ? act_dim_ : 1);
      for (int64_t r = 0; r < size_; r += kFileChunk) {
        const int64_t len = std::min(kFileChunk, size_ - r);
        float* b = buf.get();
        copy_rows(r, len, field == 0 ? b : nullptr, field == 1 ? b : nullptr,
                  field == 2 ? b : nullptr, field == 3 ? b : nullptr, nullptr);
        write_all(file.fd, b, sizeof(float) * len * dim, crc, path);
      }
    }
    const int64_t start = start_slot();
    const int64_t first = std::min(size_, capacity_ - start);
    write_all(file.fd, term_.get() + start, first, crc, path);
    write_all(file.fd, term_.get(), size_ - first, crc, path);
    uint32_t unused = 0;
    write_all(file.fd, &crc, 4, unused, path);
    if (::fsync(file.fd) != 0)
      throw IoError("ReplayPool.save: fsync of " + tmp + " failed: " + errno_text());
    const int fd = file.fd;
    file.fd = -1;
    if (::close(fd) != 0)
      throw IoError("ReplayPool.save: close of " + tmp + " failed: " + errno_text());
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
      throw IoError("ReplayPool.save: cannot rename " + tmp + " to " + path + ": " + errno_text());
    }
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  // Persist the rename itself (best effort: some filesystems refuse fsync on directories).
  const size_t slash = path.find_last_of('/');
  const std::string dir =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  Fd d;
  d.fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (d.fd >= 0) (void)::fsync(d.fd);
}

ReplayPool ReplayPool::load(const std::string& path) {
  auto bad = [&](const std::string& why) {
    return FormatError("ReplayPool.load: " + path + " is not a valid pool file (" + why + ")");
  };
  Fd file;
  file.fd = ::open(path.c_str(), O_RDONLY);
  if (file.fd < 0) throw IoError("ReplayPool.load: cannot open " + path + ": " + errno_text());
  struct stat st;
  if (::fstat(file.fd, &st) != 0)
    throw IoError("ReplayPool.load: cannot stat " + path + ": " + errno_text());
  const int64_t file_size = static_cast<int64_t>(st.st_size);
  if (file_size < kHeaderBytes + 4) {
    throw bad("truncated: " + std::to_string(file_size) + " bytes, a pool file has at least " +
              std::to_string(kHeaderBytes + 4));
  }
  unsigned char header[kHeaderBytes];
  uint32_t crc = 0;
  read_all(file.fd, header, sizeof(header), crc, path);
  if (std::memcmp(header, kMagic, 8) != 0) throw bad("wrong magic; expected \"MBPOPOOL\"");
  if (get<uint32_t>(header, 72) != crc32(header, 72))
    throw bad("header checksum mismatch: file is corrupted");
  const uint32_t version = get<uint32_t>(header, 8);
  if (version != kVersion) {
    throw bad("unsupported version " + std::to_string(version) + ", expected " +
              std::to_string(kVersion));
  }
  const int64_t capacity = get<int64_t>(header, 16), obs_dim = get<int64_t>(header, 24),
                act_dim = get<int64_t>(header, 32), size = get<int64_t>(header, 40),
                write_pos = get<int64_t>(header, 48);
  if (capacity < 1 || capacity > kMaxCapacity || obs_dim < 1 || obs_dim > kMaxDim || act_dim < 1 ||
      act_dim > kMaxDim || size < 0 || size > capacity || write_pos < 0 || write_pos >= capacity ||
      (size < capacity && write_pos != size)) {
    throw bad("inconsistent header: capacity " + std::to_string(capacity) + ", obs_dim " +
              std::to_string(obs_dim) + ", act_dim " + std::to_string(act_dim) + ", size " +
              std::to_string(size) + ", write_pos " + std::to_string(write_pos));
  }
  // The file must hold exactly `size` rows before anything is allocated (the bounds
  // above keep this product below 2**60).
  const int64_t row_bytes = 4 * (2 * obs_dim + act_dim + 1) + 1;
  const int64_t expected = kHeaderBytes + size * row_bytes + 4;
  if (file_size != expected) {
    throw bad((file_size < expected ? "truncated: " : "trailing bytes: ") +
              std::to_string(file_size) + " bytes, expected " + std::to_string(expected) + " for " +
              std::to_string(size) + " rows");
  }
  // The capacity (rows the pool may hold later) is reserved, not touched: a header within
  // the bounds may still ask for more address space than the machine gives.
  std::optional<ReplayPool> made;
  try {
    made.emplace(capacity, obs_dim, act_dim, get<uint64_t>(header, 56));
  } catch (const std::bad_alloc&) {
    throw AllocationError("ReplayPool.load: " + path + " asks for capacity " + std::to_string(capacity) +
                          " rows of " + std::to_string(row_bytes) + " bytes, which cannot be allocated");
  }
  ReplayPool& pool = *made;
  pool.size_ = size;
  pool.write_pos_ = write_pos;
  pool.rng_counter_ = get<uint64_t>(header, 64);
  const int64_t start = pool.start_slot();
  const int64_t first = std::min(size, capacity - start);
  // Field sections are read in chunks and packed into the records. Values are checked
  // too: a well-formed file from another writer must still obey the pool's invariants.
  static const char* const kNames[4] = {"obs", "act", "rew", "next_obs"};
  std::unique_ptr<float[]> buf(new float[kFileChunk * obs_dim + kFileChunk * act_dim]);
  for (int field = 0; field < 4; ++field) {
    const int64_t dim = field == 0 || field == 3 ? obs_dim : (field == 1 ? act_dim : 1);
    for (const auto& [slot0, count] :
         {std::pair<int64_t, int64_t>{start, first}, {0, size - first}}) {
      for (int64_t r = 0; r < count; r += kFileChunk) {
        const int64_t len = std::min(kFileChunk, count - r);
        float* b = buf.get();
        read_all(file.fd, b, sizeof(float) * len * dim, crc, path);
        if (first_nonfinite(b, len * dim) >= 0) {
          throw bad(std::string(kNames[field]) + " contains a non-finite value (NaN or Inf)");
        }
        pool.pack_rows(slot0 + r, len, field == 0 ? b : nullptr, field == 1 ? b : nullptr,
                       field == 2 ? b : nullptr, field == 3 ? b : nullptr);
      }
    }
  }
  read_all(file.fd, pool.term_.get() + start, first, crc, path);
  read_all(file.fd, pool.term_.get(), size - first, crc, path);
  uint32_t stored = 0, unused = 0;
  read_all(file.fd, &stored, 4, unused, path);
  if (stored != crc) throw bad("data checksum mismatch: file is corrupted");
  for (int64_t i = 0; i < size; ++i) {
    if (pool.term_[pool.slot(i)] > 1) throw bad("terminated: values must be 0 or 1");
  }
  return std::move(pool);
}

}  // namespace mbpo_fast
