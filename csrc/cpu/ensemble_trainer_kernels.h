// Internal: AVX-512 elementwise kernels of the ensemble trainer (ensemble_trainer.cpp),
// defined in ensemble_trainer_avx512.cpp.
#pragma once

#include <cstdint>

namespace mbpo_fast {
namespace cpu {

// True when ensemble_trainer_avx512.cpp was compiled with AVX-512 and this CPU has AVX-512F.
bool ensemble_trainer_avx512_supported();

// SiLU keeping its sigmoid for the backward (values identical to train_ops.h silu_forward /
// silu_backward on AVX-512, minus the backward's exp): x <- x * s, pre <- x, sig <- s =
// 1 / (1 + exp(-x)); then g *= s * (1 + pre * (1 - s)). n floats each.
void ensemble_silu_forward_avx512(float* x, float* pre, float* sig, int64_t n);
void ensemble_silu_backward_avx512(const float* pre, const float* sig, float* g, int64_t n);

}  // namespace cpu
}  // namespace mbpo_fast
