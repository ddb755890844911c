// Built only when CUDA is not compiled: the CUDA entry points report its absence.
#include <stdexcept>
#include <string>

#include "mbpo_fast/cuda.h"
#include "mbpo_fast/cuda_ops.h"

namespace mbpo_fast {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string(what) +
                           ": mbpo_fast was built without CUDA (MBPO_FAST_CUDA=OFF or no nvcc)");
}
}  // namespace

bool cuda_compiled() noexcept { return false; }
std::string cuda_architectures() { return ""; }
int cuda_device_count() noexcept { return 0; }
void cuda_philox_fill_normal(uint64_t, uint64_t, uint64_t, int64_t, float*, void*) {
  no_cuda("cuda_philox_fill_normal");
}
void cuda_philox_fill_u32(uint64_t, uint64_t, uint64_t, int64_t, uint32_t*, void*) {
  no_cuda("cuda_philox_fill_u32");
}

size_t cuda_ensemble_step_workspace_bytes(int64_t, int64_t) { no_cuda("cuda_ensemble_step_workspace_bytes"); }
size_t cuda_ensemble_disagreement_workspace_bytes(int64_t, int64_t, int64_t) {
  no_cuda("cuda_ensemble_disagreement_workspace_bytes");
}
void cuda_ensemble_step(const EnsembleView&, const float*, const float*, int64_t, uint64_t, bool, const int64_t*,
                        float*, float*, int64_t*, void*, size_t, void*) {
  no_cuda("cuda_ensemble_step");
}
void cuda_ensemble_predict(const EnsembleView&, const float*, const float*, int64_t, float*, float*, void*) {
  no_cuda("cuda_ensemble_predict");
}
void cuda_ensemble_disagreement(const EnsembleView&, const float*, const float*, int64_t, const int64_t*, int64_t,
                                float*, void*, size_t, void*) {
  no_cuda("cuda_ensemble_disagreement");
}

CudaReplayPool::CudaReplayPool(int64_t, int64_t, int64_t, uint64_t) { no_cuda("ReplayPool(device='cuda')"); }
CudaReplayPool::~CudaReplayPool() = default;
CudaReplayPool::CudaReplayPool(CudaReplayPool&&) noexcept {}
CudaReplayPool& CudaReplayPool::operator=(CudaReplayPool&&) noexcept { return *this; }
void CudaReplayPool::release() noexcept {}
void CudaReplayPool::add_batch(const float*, const float*, const float*, const float*, const uint8_t*, int64_t,
                               void*) {
  no_cuda("CudaReplayPool::add_batch");
}
void CudaReplayPool::resize(int64_t, void*) { no_cuda("CudaReplayPool::resize"); }
void CudaReplayPool::sample(int64_t, float*, float*, float*, float*, uint8_t*, void*) {
  no_cuda("CudaReplayPool::sample");
}
void CudaReplayPool::transitions(float*, float*, float*, float*, uint8_t*, void*) const {
  no_cuda("CudaReplayPool::transitions");
}
void CudaReplayPool::gather(const int64_t*, int64_t, float*, float*, float*, float*, uint8_t*, void*) const {
  no_cuda("CudaReplayPool::gather");
}
ReplayPool CudaReplayPool::to_host(void*) const { no_cuda("CudaReplayPool::to_host"); }
CudaReplayPool CudaReplayPool::from_host(const ReplayPool&, void*) { no_cuda("CudaReplayPool::from_host"); }
void cuda_sample_mixed(CudaReplayPool&, CudaReplayPool&, int64_t, double, int64_t, float*, float*, float*, float*,
                       uint8_t*, void*) {
  no_cuda("cuda_sample_mixed");
}
RolloutStats cuda_branched_rollout(const ActorView&, const EnsembleView&, TerminationId, const CudaReplayPool&,
                                   CudaReplayPool&, int64_t, int64_t, uint64_t, void*, const RolloutUncertainty&) {
  no_cuda("cuda_branched_rollout");
}
RolloutStats cuda_branched_rollout(const ActorView&, const EnsembleView&, const TerminationMLPView&,
                                   const CudaReplayPool&, CudaReplayPool&, int64_t, int64_t, uint64_t, void*,
                                   const RolloutUncertainty&) {
  no_cuda("cuda_branched_rollout");
}
size_t cuda_ensemble_step_uncertainty_workspace_bytes(int64_t, int64_t, int64_t) {
  no_cuda("cuda_ensemble_step_uncertainty_workspace_bytes");
}
void cuda_ensemble_step_uncertainty(const EnsembleView&, const float*, const float*, int64_t, uint64_t, bool, float*,
                                    float*, float*, void*, size_t, void*) {
  no_cuda("cuda_ensemble_step_uncertainty");
}
void cuda_termination_mlp(const TerminationMLPView&, const float*, const float*, const float*, int64_t, uint8_t*,
                          float*, void*) {
  no_cuda("cuda_termination_mlp");
}
PlanResult cuda_plan_optimize(const EnsembleView&, const PlannerConfig&, const PlanObjective&, const float*,
                              const float*, uint64_t, float*, float*, void*) {
  no_cuda("cuda_plan_optimize");
}
void cuda_plan_evaluate(const EnsembleView&, const PlanObjective&, const float*, const float*, int64_t, int64_t,
                        int64_t, Propagation, uint64_t, double*, int64_t*, void*) {
  no_cuda("cuda_plan_evaluate");
}
}  // namespace mbpo_fast
