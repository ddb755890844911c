// A small persistent thread pool for the CPU kernels (no OpenMP: torch ships its own
// OpenMP runtime and two runtimes in one process fight over the cores).
#pragma once

#include <cstdint>
#include <functional>

namespace mbpo_fast {

// Number of worker threads the CPU kernels use (default: hardware concurrency).
int num_threads() noexcept;
// Sets the number of threads (>= 1). Takes effect at the next parallel_for.
void set_num_threads(int n);

// Calls fn(begin, end) over [0, n) split into contiguous chunks of at least `grain`
// elements, on up to num_threads() threads; the caller runs the first chunk. Work with
// fewer than 2 * grain elements, nested calls and calls made while another thread is
// inside parallel_for run inline on the calling thread, so it is safe to call from any
// thread. Exceptions thrown by fn are rethrown on the caller (the first one wins).
// On Linux the workers are kept off the caller's CPU (their affinity masks exclude it;
// MBPO_FAST_THREAD_PLACEMENT=0 turns that off); see parallel.cpp.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace mbpo_fast
