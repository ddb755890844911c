// The trainer building blocks (train_ops.h) against double-precision references: sgemm and
// sgemm_bf16 (dispatched fast kernel and portable kernel) over every transposition form,
// beta 0/1/other, sizes 1..300, leading dimensions wider than the rows, NaN-filled outputs
// and guard columns that must stay untouched; the dense layer's backward; the activations'
// backward; Adam over several steps.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "harness.h"
#include "mbpo_fast/train_ops.h"

using namespace mbpo_fast;

namespace {

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                        int64_t, float, float*, int64_t);

float bf16(float x) {  // round to nearest even, as the kernels do (finite inputs)
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  bits &= 0xFFFF0000u;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return out;
}

struct GemmCase {
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  float beta;
};

// Runs `fn` on random inputs and checks every C entry against a double reference with a
// bound on float32 summation error; the ldc - n guard columns of each C row must not change.
// Returns the number of mismatches (also reported through CHECK).
int check_gemm(GemmFn fn, const GemmCase& g, bool bf16_inputs, std::mt19937& rng, const char* what) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t a_rows = g.ta ? g.k : g.m, a_cols = g.ta ? g.m : g.k;
  const int64_t b_rows = g.tb ? g.n : g.k, b_cols = g.tb ? g.k : g.n;
  std::vector<float> a(static_cast<size_t>(std::max<int64_t>(1, a_rows * g.lda)));
  std::vector<float> b(static_cast<size_t>(std::max<int64_t>(1, b_rows * g.ldb)));
  for (auto& v : a) v = nd(rng);
  for (auto& v : b) v = nd(rng);
  (void)a_cols;
  (void)b_cols;
  const float guard = 12345.0f;
  std::vector<float> c(static_cast<size_t>(g.m * g.ldc));
  std::vector<float> c0(c.size());
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.ldc; ++j) {
      c0[i * g.ldc + j] = j < g.n ? (g.beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : nd(rng)) : guard;
    }
  }
  c = c0;
  fn(g.ta, g.tb, g.m, g.n, g.k, a.data(), g.lda, b.data(), g.ldb, g.beta, c.data(), g.ldc);
  auto av = [&](int64_t i, int64_t p) {
    const float v = g.ta ? a[p * g.lda + i] : a[i * g.lda + p];
    return static_cast<double>(bf16_inputs ? bf16(v) : v);
  };
  auto bv = [&](int64_t p, int64_t j) {
    const float v = g.tb ? b[j * g.ldb + p] : b[p * g.ldb + j];
    return static_cast<double>(bf16_inputs ? bf16(v) : v);
  };
  int bad = 0;
  for (int64_t i = 0; i < g.m; ++i) {
    for (int64_t j = 0; j < g.ldc; ++j) {
      const float got = c[i * g.ldc + j];
      if (j >= g.n) {
        if (got != guard) ++bad;
        continue;
      }
      double ref = 0.0, mag = 0.0;
      for (int64_t p = 0; p < g.k; ++p) {
        const double t = av(i, p) * bv(p, j);
        ref += t;
        mag += std::fabs(t);
      }
      if (g.beta != 0.0f) {
        ref += static_cast<double>(g.beta) * c0[i * g.ldc + j];
        mag += std::fabs(static_cast<double>(g.beta) * c0[i * g.ldc + j]);
      }
      const double tol = (static_cast<double>(g.k) + 3.0) * 1.2e-7 * mag + 1e-30;
      if (!(std::fabs(got - ref) <= tol)) ++bad;
    }
  }
  if (bad != 0) {
    ::mbpo_fast_test::fail(__FILE__, __LINE__,
                           std::string(what) + " ta=" + std::to_string(g.ta) + " tb=" + std::to_string(g.tb) +
                               " m=" + std::to_string(g.m) + " n=" + std::to_string(g.n) +
                               " k=" + std::to_string(g.k) + " beta=" + std::to_string(g.beta) + ": " +
                               std::to_string(bad) + " bad entries");
  }
  return bad;
}

// The shapes the trainers use plus random ones (incl. 1 and odd sizes, wide leading dims).
std::vector<GemmCase> gemm_cases(std::mt19937& rng, int random_count) {
  std::vector<GemmCase> cases;
  const int64_t shapes[][3] = {
      {256, 256, 256}, {256, 256, 11}, {256, 256, 14}, {256, 6, 256}, {256, 1, 256}, {11, 256, 256},
      {14, 256, 256},  {256, 14, 256}, {256, 11, 256}, {256, 200, 14}, {256, 24, 200}, {200, 24, 256},
      {256, 200, 24},  {1, 1, 1},      {1, 7, 3},      {5, 1, 9},      {15, 33, 17},  {29, 47, 400},
      {3, 2, 1},       {1, 256, 256},  {256, 256, 1},  {17, 1, 1},     {64, 2, 5},
      // k beyond one k block (384 float32 / 512 bf16), plain and transposed-C paths
      {300, 3, 1100},  {40, 5, 777},   {20, 300, 1030}, {70, 90, 800},
      // more than one 2048-column block, plain and transposed-C (n = 3 runs as C^T)
      {3, 2100, 5},    {2100, 3, 20}};
  for (const auto& s : shapes) {
    for (int form = 0; form < 4; ++form) {
      const bool ta = form & 1, tb = form & 2;
      for (float beta : {0.0f, 1.0f}) {
        const int64_t m = s[0], n = s[1], k = s[2];
        cases.push_back({ta, tb, m, n, k, (ta ? m : k), (tb ? k : n), n, beta});
      }
    }
  }
  std::uniform_int_distribution<int> form_d(0, 3), pad_d(0, 5), beta_d(0, 2);
  std::uniform_int_distribution<int64_t> size_d(1, 70), big_d(1, 300);
  for (int t = 0; t < random_count; ++t) {
    const bool big = t % 5 == 0;
    const int64_t m = big ? big_d(rng) : size_d(rng), n = big ? big_d(rng) : size_d(rng);
    const int64_t k = big ? big_d(rng) : size_d(rng);
    const int form = form_d(rng);
    const bool ta = form & 1, tb = form & 2;
    const float betas[] = {0.0f, 1.0f, -0.5f};
    cases.push_back({ta, tb, m, n, k, (ta ? m : k) + pad_d(rng), (tb ? k : n) + pad_d(rng), n + pad_d(rng),
                     betas[beta_d(rng)]});
  }
  return cases;
}

}  // namespace

TEST_CASE("sgemm (dispatched) matches a double reference: all forms, sizes, beta, strides") {
  std::mt19937 rng(1);
  for (const auto& g : gemm_cases(rng, 160)) check_gemm(&sgemm, g, false, rng, sgemm_kernel_name());
}

TEST_CASE("sgemm_portable matches a double reference") {
  std::mt19937 rng(2);
  for (const auto& g : gemm_cases(rng, 40)) check_gemm(&sgemm_portable, g, false, rng, "portable");
}

TEST_CASE("sgemm_bf16 (dispatched) matches a double reference on bf16-rounded inputs") {
  std::mt19937 rng(3);
  for (const auto& g : gemm_cases(rng, 160)) check_gemm(&sgemm_bf16, g, true, rng, sgemm_bf16_kernel_name());
}

TEST_CASE("sgemm_bf16_portable matches a double reference on bf16-rounded inputs") {
  std::mt19937 rng(4);
  for (const auto& g : gemm_cases(rng, 40)) check_gemm(&sgemm_bf16_portable, g, true, rng, "bf16 portable");
}

TEST_CASE("sgemm and sgemm_bf16 agree with the portable kernels entry by entry") {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int form = 0; form < 4; ++form) {
    const bool ta = form & 1, tb = form & 2;
    const int64_t m = 37, n = 45, k = 123;
    std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n));
    for (auto& v : a) v = nd(rng);
    for (auto& v : b) v = nd(rng);
    std::vector<float> fast(static_cast<size_t>(m * n)), ref(fast.size());
    const int64_t lda = ta ? m : k, ldb = tb ? k : n;
    for (int bf = 0; bf < 2; ++bf) {
      (bf ? sgemm_bf16 : sgemm)(ta, tb, m, n, k, a.data(), lda, b.data(), ldb, 0.0f, fast.data(), n);
      (bf ? sgemm_bf16_portable : sgemm_portable)(ta, tb, m, n, k, a.data(), lda, b.data(), ldb, 0.0f, ref.data(),
                                                  n);
      double worst = 0.0;
      for (size_t i = 0; i < fast.size(); ++i) worst = std::max(worst, double(std::fabs(fast[i] - ref[i])));
      CHECK(worst < 1e-4);  // |C| ~ sqrt(123): only summation-order rounding may differ
    }
  }
}

TEST_CASE("sgemm and sgemm_bf16 are safe on concurrent threads (thread-local packing buffers)") {
  // The trainers call the GEMM from parallel_for workers at the same time, with different
  // shapes: each thread's results must equal the same call made alone.
  auto work = [](uint32_t seed, int* bad) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int it = 0; it < 30; ++it) {
      const int64_t m = 1 + (seed * 7 + it * 13) % 200, n = 1 + (seed * 11 + it * 5) % 150;
      const int64_t k = 1 + (seed * 3 + it * 17) % 300;
      const bool ta = (it + seed) & 1, tb = (it / 2 + seed) & 1, bf = it % 3 == 0;
      std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(k * n));
      for (auto& v : a) v = nd(rng);
      for (auto& v : b) v = nd(rng);
      std::vector<float> c(static_cast<size_t>(m * n)), ref(c.size());
      const int64_t lda = ta ? m : k, ldb = tb ? k : n;
      (bf ? sgemm_bf16 : sgemm)(ta, tb, m, n, k, a.data(), lda, b.data(), ldb, 0.0f, c.data(), n);
      (bf ? sgemm_bf16_portable : sgemm_portable)(ta, tb, m, n, k, a.data(), lda, b.data(), ldb, 0.0f,
                                                  ref.data(), n);
      for (size_t i = 0; i < c.size(); ++i) *bad += !(std::fabs(c[i] - ref[i]) <= 1e-4f * (1.0f + std::fabs(ref[i])) * std::sqrt(float(k)));
    }
  };
  int bad[4] = {0, 0, 0, 0};
  std::vector<std::thread> threads;
  for (uint32_t t = 0; t < 4; ++t) threads.emplace_back(work, t + 1, &bad[t]);
  for (auto& th : threads) th.join();
  CHECK(bad[0] + bad[1] + bad[2] + bad[3] == 0);
}

#if defined(__linux__)
// `count` floats that end exactly where an inaccessible page begins: any read or write past
// the last element faults.
struct Guarded {
  char* base = nullptr;
  size_t bytes = 0;
  float* data = nullptr;
  explicit Guarded(size_t count) {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t body = (count * sizeof(float) + page - 1) / page * page;
    bytes = body + page;
    base = static_cast<char*>(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    mprotect(base + body, page, PROT_NONE);
    data = reinterpret_cast<float*>(base + body) - count;
  }
  ~Guarded() { munmap(base, bytes); }
  Guarded(const Guarded&) = delete;
  Guarded& operator=(const Guarded&) = delete;
};

TEST_CASE("sgemm / sgemm_bf16 never touch memory past the last row (guard page)") {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t shapes[][3] = {{256, 6, 256}, {13, 5, 7}, {1, 1, 33}, {7, 24, 200}, {256, 1, 17},
                               {3, 40, 1},    {30, 17, 19}, {256, 14, 256}, {11, 256, 256}};
  int bad = 0;
  for (const auto& sh : shapes) {
    for (int form = 0; form < 4; ++form) {
      for (int bf = 0; bf < 2; ++bf) {
        const bool ta = form & 1, tb = form & 2;
        const int64_t m = sh[0], n = sh[1], k = sh[2];
        const int64_t a_rows = ta ? k : m, a_cols = ta ? m : k, b_rows = tb ? n : k, b_cols = tb ? k : n;
        const int64_t lda = a_cols + 1, ldb = b_cols + 2, ldc = n + 3;
        Guarded a(static_cast<size_t>((a_rows - 1) * lda + a_cols)), b(static_cast<size_t>((b_rows - 1) * ldb + b_cols)),
            c(static_cast<size_t>((m - 1) * ldc + n));
        for (int64_t i = 0; i < (a_rows - 1) * lda + a_cols; ++i) a.data[i] = nd(rng);
        for (int64_t i = 0; i < (b_rows - 1) * ldb + b_cols; ++i) b.data[i] = nd(rng);
        for (int64_t i = 0; i < (m - 1) * ldc + n; ++i) c.data[i] = 1.0f;
        std::vector<float> ref(static_cast<size_t>((m - 1) * ldc + n), 1.0f);
        (bf ? sgemm_bf16 : sgemm)(ta, tb, m, n, k, a.data, lda, b.data, ldb, 1.0f, c.data, ldc);
        (bf ? sgemm_bf16_portable : sgemm_portable)(ta, tb, m, n, k, a.data, lda, b.data, ldb, 1.0f, ref.data(),
                                                    ldc);
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t j = 0; j < n; ++j) {
            bad += !(std::fabs(c.data[i * ldc + j] - ref[i * ldc + j]) <= 1e-4 * std::sqrt(double(k)) * 4);
          }
        }
      }
    }
  }
  CHECK(bad == 0);  // (reaching this line at all means no access faulted)
}
#endif

TEST_CASE("sgemm with k == 0 scales C (beta 0 clears NaN), m or n == 0 touches nothing") {
  std::vector<float> c = {std::nanf(""), 2.0f, 3.0f, 4.0f};
  const float dummy = 1.0f;
  sgemm(false, false, 2, 2, 0, &dummy, 1, &dummy, 2, 0.0f, c.data(), 2);
  CHECK(c[0] == 0.0f && c[1] == 0.0f && c[2] == 0.0f && c[3] == 0.0f);
  c = {1.0f, 2.0f, 3.0f, 4.0f};
  sgemm_bf16(true, true, 2, 2, 0, &dummy, 2, &dummy, 1, 0.5f, c.data(), 2);
  CHECK(c[0] == 0.5f && c[3] == 2.0f);
  sgemm(false, false, 0, 2, 3, &dummy, 3, &dummy, 2, 0.0f, c.data(), 2);
  sgemm(false, false, 2, 0, 3, &dummy, 3, &dummy, 0, 0.0f, c.data(), 2);
  CHECK(c[0] == 0.5f && c[1] == 1.0f);
}

TEST_CASE("sgemm kernel names report the dispatch") {
  const std::string f32 = sgemm_kernel_name(), b16 = sgemm_bf16_kernel_name();
  CHECK(f32 == "avx512" || f32 == "portable");
  CHECK(b16 == "avx512_bf16" || b16 == "portable");
}

TEST_CASE("linear_forward / linear_backward match a double reference (float32 and bf16)") {
  std::mt19937 rng(6);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t dims[][3] = {{256, 14, 200}, {7, 11, 256}, {1, 5, 3}, {33, 200, 24}, {9, 256, 1}};
  for (const auto& d : dims) {
    for (int prec = 0; prec < 2; ++prec) {
      const bool bf = prec == 1;
      auto q = [&](float v) { return static_cast<double>(bf ? bf16(v) : v); };
      const int64_t rows = d[0], in = d[1], out = d[2];
      const int64_t ldx = in + 3, lddy = out + 2, lddx = in + 1, ldy = out + 4;
      std::vector<float> x(static_cast<size_t>(rows * ldx)), w(static_cast<size_t>(in * out)),
          bias(static_cast<size_t>(out)), dy(static_cast<size_t>(rows * lddy));
      for (auto& v : x) v = nd(rng);
      for (auto& v : w) v = nd(rng);
      for (auto& v : bias) v = nd(rng);
      for (auto& v : dy) v = nd(rng);
      const MatmulPrecision p = bf ? MatmulPrecision::kBf16 : MatmulPrecision::kFloat32;
      std::vector<float> y(static_cast<size_t>(rows * ldy), 7.0f);
      linear_forward(x.data(), ldx, rows, w.data(), bias.data(), in, out, y.data(), ldy, p);
      int bad = 0;
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t j = 0; j < out; ++j) {
          double ref = bias[j], mag = std::fabs(bias[j]);
          for (int64_t i = 0; i < in; ++i) {
            ref += q(x[r * ldx + i]) * q(w[i * out + j]);
            mag += std::fabs(q(x[r * ldx + i]) * q(w[i * out + j]));
          }
          if (!(std::fabs(y[r * ldy + j] - ref) <= (in + 3) * 1.2e-7 * mag)) ++bad;
        }
        for (int64_t j = out; j < ldy; ++j) bad += y[r * ldy + j] != 7.0f;
      }
      CHECK(bad == 0);
      for (int acc = 0; acc < 2; ++acc) {
        std::vector<float> dw(static_cast<size_t>(in * out)), db(static_cast<size_t>(out)),
            dx(static_cast<size_t>(rows * lddx), 5.0f);
        for (auto& v : dw) v = acc ? nd(rng) : std::nanf("");
        for (auto& v : db) v = acc ? nd(rng) : std::nanf("");
        const std::vector<float> dw0 = dw, db0 = db;
        linear_backward(x.data(), ldx, rows, w.data(), in, out, dy.data(), lddy, dw.data(), db.data(), dx.data(),
                        lddx, acc == 1, p);
        bad = 0;
        for (int64_t i = 0; i < in; ++i) {
          for (int64_t j = 0; j < out; ++j) {
            double ref = acc ? dw0[i * out + j] : 0.0, mag = std::fabs(ref);
            for (int64_t r = 0; r < rows; ++r) {
              ref += q(x[r * ldx + i]) * q(dy[r * lddy + j]);
              mag += std::fabs(q(x[r * ldx + i]) * q(dy[r * lddy + j]));
            }
            bad += !(std::fabs(dw[i * out + j] - ref) <= (rows + 3) * 1.2e-7 * mag);
          }
        }
        for (int64_t j = 0; j < out; ++j) {
          double ref = acc ? db0[j] : 0.0, mag = std::fabs(ref);
          for (int64_t r = 0; r < rows; ++r) {
            ref += dy[r * lddy + j];  // the bias gradient is never rounded to bf16
            mag += std::fabs(dy[r * lddy + j]);
          }
          bad += !(std::fabs(db[j] - ref) <= (rows + 3) * 1.2e-7 * mag);
        }
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t i = 0; i < in; ++i) {
            double ref = 0.0, mag = 0.0;
            for (int64_t j = 0; j < out; ++j) {
              ref += q(dy[r * lddy + j]) * q(w[i * out + j]);
              mag += std::fabs(q(dy[r * lddy + j]) * q(w[i * out + j]));
            }
            bad += !(std::fabs(dx[r * lddx + i] - ref) <= (out + 3) * 1.2e-7 * mag);
          }
          for (int64_t i = in; i < lddx; ++i) bad += dx[r * lddx + i] != 5.0f;
        }
        CHECK(bad == 0);
      }
    }
  }
}

TEST_CASE("linear_backward skips null outputs") {
  const float x[2] = {1.0f, 2.0f}, w[2] = {3.0f, 4.0f}, dy[2] = {0.5f, -1.0f};
  float dx[2] = {9.0f, 9.0f};
  linear_backward(x, 1, 2, w, 1, 2, dy, 2, nullptr, nullptr, dx, 1, false);
  CHECK_NEAR(dx[0], 0.5 * 3.0 - 1.0 * 4.0, 1e-6);
  float db[2] = {1.0f, 1.0f};
  linear_backward(x, 1, 1, w, 1, 2, dy, 2, nullptr, db, nullptr, 1, true);
  CHECK_NEAR(db[0], 1.5, 1e-7);
  CHECK_NEAR(db[1], 0.0, 1e-7);
}

TEST_CASE("relu/silu forward and backward match double references and finite differences") {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  for (int64_t n : {1, 5, 16, 17, 100, 1000}) {
    std::vector<float> x(static_cast<size_t>(n)), g(static_cast<size_t>(n));
    for (auto& v : x) v = nd(rng);
    x[0] = n > 3 ? 0.0f : x[0];  // relu's kink: threshold_backward passes 0 there
    if (n > 4) x[1] = 95.0f, x[2] = -95.0f, x[3] = -30.0f;  // saturated sigmoid
    for (auto& v : g) v = nd(rng);
    // ReLU
    std::vector<float> h = x;
    relu_forward(h.data(), n);
    std::vector<float> gr = g;
    relu_backward(h.data(), gr.data(), n);
    int bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      bad += h[i] != (x[i] > 0.0f ? x[i] : 0.0f);
      bad += gr[i] != (x[i] > 0.0f ? g[i] : 0.0f);
    }
    CHECK(bad == 0);
    // SiLU
    std::vector<float> s = x, pre(static_cast<size_t>(n));
    silu_forward(s.data(), pre.data(), n);
    std::vector<float> gs = g;
    silu_backward(pre.data(), gs.data(), n);
    bad = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double xd = x[i], sig = 1.0 / (1.0 + std::exp(-xd));
      bad += pre[i] != x[i];
      // 1e-35 absolute: the vector exp clamps its argument at 88.3, so silu(-95) is -4e-37, not -5e-40.
      bad += !(std::fabs(s[i] - xd * sig) <= 4e-7 * std::fabs(xd * sig) + 1e-35);
      const double dref = sig * (1.0 + xd * (1.0 - sig));
      bad += !(std::fabs(gs[i] - g[i] * dref) <= 4e-7 * std::fabs(g[i]) + 1e-30);
      if (std::fabs(xd) < 20.0) {  // central difference of the double SiLU
        const double hstep = 1e-5;
        auto f = [](double v) { return v / (1.0 + std::exp(-v)); };
        const double fd = (f(xd + hstep) - f(xd - hstep)) / (2 * hstep);
        bad += !(std::fabs(dref - fd) <= 1e-6);
      }
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("adam_step follows torch's fused Adam (double reference) over several steps") {
  std::mt19937 rng(8);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t n : {1, 15, 16, 33, 1000}) {
    for (double wd : {0.0, 0.01}) {
      AdamConfig cfg;
      cfg.lr = 3e-4;
      cfg.beta1 = 0.9;
      cfg.beta2 = 0.999;
      cfg.eps = 1e-8;
      std::vector<float> p(static_cast<size_t>(n)), m(p.size(), 0.0f), v(p.size(), 0.0f);
      for (auto& x : p) x = nd(rng);
      std::vector<double> pd(p.begin(), p.end()), md(p.size(), 0.0), vd(p.size(), 0.0);
      float step = 0.0f;
      int bad = 0;
      for (int t = 1; t <= 6; ++t) {
        std::vector<float> g(p.size());
        for (auto& x : g) x = 0.1f * nd(rng);
        adam_step(p.data(), g.data(), m.data(), v.data(), &step, n, cfg, wd);
        const double bc1 = 1.0 - std::pow(cfg.beta1, t), bc2 = 1.0 - std::pow(cfg.beta2, t);
        for (int64_t i = 0; i < n; ++i) {
          const double gi = g[i] + wd * pd[i];
          md[i] = cfg.beta1 * md[i] + (1.0 - cfg.beta1) * gi;
          vd[i] = cfg.beta2 * vd[i] + (1.0 - cfg.beta2) * gi * gi;
          pd[i] -= cfg.lr / bc1 * md[i] / (std::sqrt(vd[i]) / std::sqrt(bc2) + cfg.eps);
          bad += !(std::fabs(p[i] - pd[i]) <= 2e-6 * std::fabs(pd[i]) + 1e-7);
          // m is a difference of similar terms: its error scales with |g| (~0.1), not |m|.
          bad += !(std::fabs(m[i] - md[i]) <= 1e-6 * (std::fabs(md[i]) + 0.1));
          bad += !(std::fabs(v[i] - vd[i]) <= 1e-5 * std::fabs(vd[i]) + 1e-12);
        }
        CHECK(step == static_cast<float>(t));
      }
      CHECK(bad == 0);
    }
  }
}

MBPO_TEST_MAIN
