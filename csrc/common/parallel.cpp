#include "common/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace glann {
namespace {

thread_local bool tls_inside_task = false;

class Pool {
 public:
  ~Pool() { shutdown(); }

  // Returns false when the pool is busy (another caller holds it); the caller then runs serially.
  bool run(int64_t n_tasks, int n_threads, const TaskFn& fn) {
    std::unique_lock<std::mutex> submit(submit_mu_, std::try_to_lock);
    if (!submit.owns_lock()) return false;
    ensure_workers(n_threads - 1);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_tasks_ = n_tasks;
      next_.store(0, std::memory_order_relaxed);
      active_workers_ = n_threads - 1;
      pending_ = n_threads - 1;
      ++generation_;
    }
    cv_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
    return true;
  }

  // After fork() only the forking thread exists in the child: forget the (dead) workers.
  void reset_after_fork() {
    new (&mu_) std::mutex();
    new (&submit_mu_) std::mutex();
    new (&cv_) std::condition_variable();
    new (&done_cv_) std::condition_variable();
    // The std::thread objects name threads that do not exist in the child; destroying or detaching
    // them is undefined, so leak them and start with an empty vector.
    new (&workers_) std::vector<std::thread>();
    fn_ = nullptr;
    pending_ = 0;
    stop_ = false;
  }

 private:
  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      int id = static_cast<int>(workers_.size());
      // A new worker must only take jobs submitted after it exists: start it at the current generation
      // (read under submit_mu_, which the caller holds and without which generation_ never changes).
      const uint64_t current = generation_;
      workers_.emplace_back([this, id, current] { worker_loop(id, current); });
    }
  }

  void work(int slot) {
    const bool was_inside = tls_inside_task;
    tls_inside_task = true;
    for (;;) {
      int64_t t = next_.fetch_add(1, std::memory_order_relaxed);
      if (t >= n_tasks_) break;
      (*fn_)(t, slot);
    }
    tls_inside_task = was_inside;
  }

  void worker_loop(int id, uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (id >= active_workers_) continue;  // not needed for this call
      }
      work(id + 1);
      std::lock_guard<std::mutex> lk(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_)
      if (t.joinable()) t.join();
    workers_.clear();
  }

  std::mutex submit_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const TaskFn* fn_ = nullptr;
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int active_workers_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  // Leaked on purpose: joining threads during static destruction at interpreter exit can deadlock.
  static Pool* p = [] {
    auto* q = new Pool();
    pthread_atfork(nullptr, nullptr, [] { pool().reset_after_fork(); });
    return q;
  }();
  return *p;
}

}  // namespace

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

int parallel_slots(int64_t n_tasks, int num_threads) {
  if (n_tasks <= 0) return 1;
  int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(num_threads, n_tasks)));
  return std::min(n, 4 * hardware_threads());  // never create an absurd number of threads
}

void parallel_for(int64_t n_tasks, int num_threads, const TaskFn& fn) {
  if (n_tasks <= 0) return;
  const int n = parallel_slots(n_tasks, num_threads);
  if (n == 1 || tls_inside_task || !pool().run(n_tasks, n, fn)) {
    for (int64_t t = 0; t < n_tasks; ++t) fn(t, 0);
  }
}

void parallel_for_ptr(int64_t n_tasks, int num_threads, void (*fn)(void* ctx, int64_t task, int slot), void* ctx) {
  parallel_for(n_tasks, num_threads, [fn, ctx](int64_t task, int slot) { fn(ctx, task, slot); });
}

}  // namespace glann
