// Where and how a launcher runs: one member `ExecContext exec` in every params struct.
#pragma once

namespace glann {

struct ExecContext {       // where and how a launcher runs
  bool cuda = false;       // run on CUDA (else CPU)
  int device = 0;          // CUDA device ordinal of the tensors; every CUDA launcher makes it current
  void* stream = nullptr;  // cudaStream_t of the caller's current stream on that device
  int num_threads = 1;     // CPU: threads to use (torch.get_num_threads())
};

}  // namespace glann
