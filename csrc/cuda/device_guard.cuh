// Makes `device` current for a scope and restores the previous device afterwards, so an
// object that owns memory on one GPU (CudaReplayPool) works whatever device is current.
#pragma once

#include <cuda_runtime.h>

#include "check.cuh"

namespace mbpo_fast {
namespace cuda_detail {

class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    MBPO_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device >= 0 && device != previous_) {
      MBPO_CUDA_CHECK(cudaSetDevice(device));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);  // best effort: a destructor must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

}  // namespace cuda_detail
}  // namespace mbpo_fast
