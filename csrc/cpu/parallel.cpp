#include "mbpo_fast/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "mbpo_fast/common.h"

namespace mbpo_fast {
namespace {

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
