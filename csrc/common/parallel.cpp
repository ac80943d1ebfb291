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

// One job at a time. The caller publishes it, wakes the workers and claims tasks itself; it then waits
// only for tasks that other threads have claimed and are still running, never for a worker that has not
// woken up yet. On a machine whose cores are shared with other processes a worker may not run for a
// scheduler time slice (milliseconds) after it is woken; with a wait for every worker, each call would
// cost that much, and training makes thousands of calls. A worker that wakes late finds every task
// claimed (or a newer job) and goes back to sleep: tasks are claimed by a compare-and-swap on
// (job generation, next task), so a late worker can never take a task of a job it was not woken for.
class Pool {
 public:
  ~Pool() { shutdown(); }

  // Returns false when the pool is busy (another caller holds it); the caller then runs serially.
  bool run(int64_t n_tasks, int n_threads, const TaskFn& fn) {
    if (n_tasks >= (int64_t{1} << 31)) return false;  // task numbers are 32-bit in the claim word
    std::unique_lock<std::mutex> submit(submit_mu_, std::try_to_lock);
    if (!submit.owns_lock()) return false;
    ensure_workers(n_threads - 1);
    uint64_t gen;
    {
      std::lock_guard<std::mutex> lk(mu_);
      gen = ++generation_;
      fn_ = &fn;
      n_tasks_ = n_tasks;
      active_workers_ = n_threads - 1;
      done_.store(0, std::memory_order_relaxed);
      next_.store(claim_word(gen, 0), std::memory_order_release);
    }
    cv_.notify_all();
    run_tasks(gen, n_tasks, fn, 0);
    if (done_.load(std::memory_order_acquire) < n_tasks) {
      std::unique_lock<std::mutex> lk(mu_);
      done_cv_.wait(lk, [&] { return done_.load(std::memory_order_acquire) >= n_tasks; });
    }
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
    stop_ = false;
  }

 private:
  static uint64_t claim_word(uint64_t gen, uint64_t task) { return (gen << 32) | task; }

  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      int id = static_cast<int>(workers_.size());
      // A new worker must only take jobs submitted after it exists: start it at the current generation
      // (read under submit_mu_, which the caller holds and without which generation_ never changes).
      const uint64_t current = generation_;
      workers_.emplace_back([this, id, current] { worker_loop(id, current); });
    }
  }

  // Claims and runs tasks of job `gen` until none is left (or a newer job replaced it).
  void run_tasks(uint64_t gen, int64_t n_tasks, const TaskFn& fn, int slot) {
    const bool was_inside = tls_inside_task;
    tls_inside_task = true;
    for (;;) {
      uint64_t word = next_.load(std::memory_order_acquire);
      int64_t task;
      do {
        task = static_cast<int64_t>(word & 0xffffffffu);
        if ((word >> 32) != (gen & 0xffffffffu) || task >= n_tasks) {
          tls_inside_task = was_inside;
          return;
        }
      } while (!next_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel, std::memory_order_acquire));
      fn(task, slot);
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_tasks) {
        std::lock_guard<std::mutex> lk(mu_);
        done_cv_.notify_all();
      }
    }
  }

  void worker_loop(int id, uint64_t seen) {
    for (;;) {
      const TaskFn* fn;
      int64_t n_tasks;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (id >= active_workers_) continue;  // not needed for this call
        fn = fn_;
        n_tasks = n_tasks_;
      }
      run_tasks(seen, n_tasks, *fn, id + 1);
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
  const TaskFn* fn_ = nullptr;  // the job's; read under mu_, valid until its caller returns
  int64_t n_tasks_ = 0;
  std::atomic<uint64_t> next_{0};  // (generation << 32) | next task of the current job
  std::atomic<int64_t> done_{0};   // tasks of the current job finished
  int active_workers_ = 0;
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
  // Read once: glibc answers hardware_concurrency() by opening /sys/devices/system/cpu/online, three system
  // calls that cost a small kernel call (a 4 x 4 Laplacian fwd+bwd asked it four times) more than its work.
  static const int n = [] {
    const unsigned c = std::thread::hardware_concurrency();
    return c == 0 ? 1 : static_cast<int>(c);
  }();
  return n;
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
