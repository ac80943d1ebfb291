// Host emulation of CUDA blocks for tests/cpp/hopper_emulation.cpp: a block is `nt` std::threads that
// meet at a barrier wherever the kernel calls __syncthreads(), so the GLANN_HD block bodies of csrc/ run
// here unchanged. Built with -fsanitize=thread, a missing barrier between a shared-memory write and
// another thread's read is a data race that ThreadSanitizer reports; with -fsanitize=address, shared
// memory is an exact-size heap buffer, so an access past a layout's end is reported too.
#pragma once
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

namespace emu {

// A reusable barrier for n threads (C++17: no std::barrier).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    std::unique_lock<std::mutex> lock(m_);
    const int64_t gen = generation_;
    if (++waiting_ == n_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    // Threads of a block (or segment) that diverge around a barrier never meet: report it, do not hang.
    if (!cv_.wait_for(lock, std::chrono::seconds(60), [&] { return generation_ != gen; })) {
      std::printf("FAIL barrier: %d of %d threads waited 60 s (divergent control flow?)\n", waiting_, n_);
      std::fflush(stdout);
      std::abort();
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_;
  int waiting_ = 0;
  int64_t generation_ = 0;
};

// Runs body(tid, sync) on nt threads; sync() is the block's __syncthreads().
template <typename Body>
void run_block(int nt, const Body& body) {
  Barrier barrier(nt);
  auto sync = [&barrier] { barrier.wait(); };
  std::vector<std::thread> threads;
  threads.reserve(nt);
  for (int t = 0; t < nt; ++t) threads.emplace_back([&, t] { body(t, sync); });
  for (std::thread& th : threads) th.join();
}

// Failure bookkeeping: CHECK prints the first few failures of a test and counts them all.
struct Failures {
  int64_t count = 0;
  void fail(const char* what, int64_t a = 0, int64_t b = 0, int64_t c = 0) {
    if (count < 20) std::printf("FAIL %s (%lld, %lld, %lld)\n", what, (long long)a, (long long)b, (long long)c);
    ++count;
  }
};

// A whole file into memory.
inline std::vector<char> read_file(const char* path) {
  std::vector<char> data;
  FILE* f = std::fopen(path, "rb");
  if (f == nullptr) return data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.insert(data.end(), buf, buf + n);
  std::fclose(f);
  return data;
}

inline bool write_file(const char* path, const std::vector<char>& data) {
  FILE* f = std::fopen(path, "wb");
  if (f == nullptr) return false;
  const bool ok = std::fwrite(data.data(), 1, data.size(), f) == data.size();
  return std::fclose(f) == 0 && ok;
}

// Sequential reader/writer of little-endian plain values.
struct Reader {
  const std::vector<char>& d;
  size_t pos = 0;
  template <typename T>
  T get() {
    T v;
    std::memcpy(&v, d.data() + pos, sizeof(T));
    pos += sizeof(T);
    return v;
  }
};

struct Writer {
  std::vector<char> d;
  template <typename T>
  void put(const T& v) {
    const char* p = reinterpret_cast<const char*>(&v);
    d.insert(d.end(), p, p + sizeof(T));
  }
};

}  // namespace emu
