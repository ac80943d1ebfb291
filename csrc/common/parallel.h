// A small persistent thread pool for the CPU kernels.
//
// Why not OpenMP: torch wheels bundle their own libgomp; a second OpenMP runtime in the same process
// spins its own threads next to torch's and oversubscribes the cores. This pool's workers sleep on a
// condition variable between calls (no spinning), the caller passes the thread count it wants
// (the Python layer passes torch.get_num_threads()), and the pool is rebuilt after fork() so
// DataLoader workers can call the kernels.
#pragma once
#include <cstdint>
#include <functional>

namespace glann {

// Runs fn(task, slot) for every task in [0, n_tasks) on at most num_threads threads, the calling
// thread included, and returns when all are done. `slot` in [0, min(num_threads, n_tasks)) identifies
// the running thread, so a kernel can give each thread its own part of a caller-allocated workspace.
// Tasks are claimed dynamically, so the assignment of tasks to threads is not fixed: kernels must make
// results independent of it (they do: each task writes its own outputs, and reductions are combined in
// task order afterwards). The caller works through the tasks itself and waits only for tasks already
// running on another thread, never for a worker that has not been scheduled yet (parallel.cpp): on a
// machine shared with other processes a call costs at most what the caller alone would take, plus the
// tail of a task that a worker holds.
// A call from inside a task, or while another thread is using the pool, runs serially.
using TaskFn = std::function<void(int64_t task, int slot)>;
void parallel_for(int64_t n_tasks, int num_threads, const TaskFn& fn);

// The same through a plain function pointer, for the per-ISA kernel copies (common/cpu_dispatch.h): a
// std::function built there would be code that the linker may share with the baseline copy.
void parallel_for_ptr(int64_t n_tasks, int num_threads, void (*fn)(void* ctx, int64_t task, int slot), void* ctx);

// parallel_for_ptr with a lambda: instantiated per lambda type, so every kernel copy has its own.
template <typename Fn>
void parallel_for_each(int64_t n_tasks, int num_threads, const Fn& fn) {
  parallel_for_ptr(
      n_tasks, num_threads, [](void* ctx, int64_t task, int slot) { (*static_cast<const Fn*>(ctx))(task, slot); },
      const_cast<Fn*>(&fn));
}

// Number of slots parallel_for(n_tasks, num_threads, ...) uses: size per-thread workspaces with it.
int parallel_slots(int64_t n_tasks, int num_threads);

// Hardware threads available to the process (at least 1).
int hardware_threads();

}  // namespace glann
