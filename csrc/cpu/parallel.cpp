#include "mbpo_fast/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include "mbpo_fast/common.h"

namespace mbpo_fast {
namespace {

// Worker placement. Linux's wake-up path sometimes puts a woken worker on the CPU of the
// thread that woke it (on a VM it treats a vCPU that the host has descheduled, after a
// few idle milliseconds, as busy), where it waits until the caller has done all the work
// alone, and the pair can stay that way for many calls. Measured on a 2-vCPU VM: the
// B = 256 ensemble step took 715-830 µs instead of ~415 µs, call after call, with the
// worker starting 730 µs after it was woken. So before waking the workers the caller
// takes its own CPU out of their affinity masks (pthread_setaffinity_np; only when the
// caller has moved since the last region, so a steady caller pays one sched_getcpu per
// region). The workers stay free to run on every other allowed CPU.
// MBPO_FAST_THREAD_PLACEMENT=0 turns this off.
class Placement {
 public:
  Placement() {
#if defined(__linux__)
    const char* env = std::getenv("MBPO_FAST_THREAD_PLACEMENT");
    enabled_ = env == nullptr || std::string(env) != "0";
    CPU_ZERO(&allowed_);
    if (enabled_ && sched_getaffinity(0, sizeof(cpu_set_t), &allowed_) != 0) enabled_ = false;
    if (enabled_ && CPU_COUNT(&allowed_) < 2) enabled_ = false;  // nowhere else to go
#endif
  }

  // Keeps `workers` off the calling thread's CPU (see above).
  void keep_off_caller(std::vector<std::thread>& workers) noexcept {
#if defined(__linux__)
    if (!enabled_) return;
    const int cpu = sched_getcpu();
    if (cpu == excluded_cpu_ && workers.size() == placed_) return;
    cpu_set_t mask = allowed_;
    if (cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &allowed_)) CPU_CLR(cpu, &mask);
    if (CPU_COUNT(&mask) == 0) return;
    // Best effort: a failure (e.g. a cpuset changed under us) leaves the workers as they were.
    for (auto& w : workers) pthread_setaffinity_np(w.native_handle(), sizeof(cpu_set_t), &mask);
    excluded_cpu_ = cpu;
    placed_ = workers.size();
#else
    (void)workers;
#endif
  }

 private:
  bool enabled_ = false;
#if defined(__linux__)
  cpu_set_t allowed_;
#endif
  int excluded_cpu_ = -1;
  size_t placed_ = 0;
};

class ThreadPool {
 public:
  ~ThreadPool() { stop_workers(); }

  int threads() const noexcept { return requested_.load(); }

  void set_threads(int n) {
    require(n >= 1, "set_num_threads: expected n >= 1, got " + std::to_string(n));
    requested_.store(n);
  }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    grain = std::max<int64_t>(grain, 1);
    const int64_t max_chunks = (n + grain - 1) / grain;
    const int want = static_cast<int>(std::min<int64_t>(requested_.load(), max_chunks));
    std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
    if (want <= 1 || !region.owns_lock() || inside_) {
      if (n > 0) fn(0, n);
      return;
    }
    ensure_workers(want - 1);
    placement_.keep_off_caller(workers_);
    const int chunks = want;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &fn;
      task_n_ = n;
      task_chunks_ = chunks;
      remaining_ = chunks - 1;
      error_ = nullptr;
      ++generation_;
    }
    work_cv_.notify_all();
    inside_ = true;
    run_chunk(0);
    inside_ = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return remaining_ == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void run_chunk(int chunk) {
    const int64_t begin = task_n_ * chunk / task_chunks_;
    const int64_t end = task_n_ * (chunk + 1) / task_chunks_;
    try {
      if (end > begin) (*task_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
  }

  void ensure_workers(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { worker_loop(id); });
    }
  }

  void worker_loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        work_cv_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (id >= task_chunks_) continue;  // this region needs fewer threads
      }
      run_chunk(id);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --remaining_;
      }
      done_cv_.notify_one();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    work_cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

  std::atomic<int> requested_{std::max(1, static_cast<int>(std::thread::hardware_concurrency()))};
  std::mutex region_mutex_;  // one parallel region at a time
  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)>* task_ = nullptr;
  int64_t task_n_ = 0;
  int task_chunks_ = 0;
  Placement placement_;  // used under region_mutex_
  int remaining_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  static thread_local bool inside_;
};

thread_local bool ThreadPool::inside_ = false;

ThreadPool& pool() {
  static ThreadPool instance;
  return instance;
}

}  // namespace

int num_threads() noexcept { return pool().threads(); }
void set_num_threads(int n) { pool().set_threads(n); }
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  pool().run(n, grain, fn);
}

}  // namespace mbpo_fast
