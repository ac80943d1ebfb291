// Host emulation of the Hopper kernels (issue 15): the GLANN_HD index math, schedules and block bodies
// of csrc/*/..._math.h checked on the CPU. tests/test_hopper_emulation.py compiles this file (plainly,
// and under AddressSanitizer and ThreadSanitizer) and drives it:
//
//   hopper_emulation lap-index                      Laplacian index math, exhaustively
//   hopper_emulation lap-plan PLANES H W LEVELS ELEM LIMIT
//   hopper_emulation lap-fwd|lap-bwd ELEM IN OUT    the fused launch sequence on files (emulate_laplacian.h)
//   hopper_emulation nn-checks                      tensor-core nn_argmin: maps, fragments, pipeline, epilogue
//   hopper_emulation sphere-map                     vectorised projection: lane mapping, when it applies
//   hopper_emulation sphere-vec ELEM IN OUT         its row body on a warp of host threads (emulate_sphere.h)
//   hopper_emulation tf32 HEX...                    tf32_rna_bits of float32 bit patterns, one hex word a line
//
// Each prints FAIL lines for what is wrong, "OK <command>" when nothing is, and exits 0 only then.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "emulate_laplacian.h"
#include "emulate_nn_argmin.h"
#include "emulate_sphere.h"

namespace {

int report(const char* what, int64_t failures) {
  if (failures == 0) std::printf("OK %s\n", what);
  return failures == 0 ? 0 : 1;
}

int usage() {
  std::fprintf(stderr, "usage: hopper_emulation COMMAND ... (see the head of hopper_emulation.cpp)\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  const char* cmd = argv[1];
  if (std::strcmp(cmd, "lap-index") == 0) return report(cmd, emu::laplacian_index_checks());
  if (std::strcmp(cmd, "nn-checks") == 0) return report(cmd, emu::nn_argmin_checks());
  if (std::strcmp(cmd, "sphere-map") == 0) return report(cmd, emu::sphere_map_checks());
  if (std::strcmp(cmd, "tf32") == 0) {
    for (int i = 2; i < argc; ++i)
      std::printf("%08x\n", unsigned(glann::nnmma::tf32_rna_bits(uint32_t(std::strtoul(argv[i], nullptr, 16)))));
    return 0;
  }
  if (std::strcmp(cmd, "sphere-vec") == 0 && argc == 5)
    return std::strcmp(argv[2], "8") == 0 ? emu::sphere_file_command<double>(argv[3], argv[4])
                                          : emu::sphere_file_command<float>(argv[3], argv[4]);
  if (std::strcmp(cmd, "lap-plan") == 0 && argc == 8) {
    emu::laplacian_plan(std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4]), std::atoi(argv[5]),
                        std::atoi(argv[6]), std::atoll(argv[7]));
    return 0;
  }
  if ((std::strcmp(cmd, "lap-fwd") == 0 || std::strcmp(cmd, "lap-bwd") == 0) && argc == 5) {
    const bool forward = std::strcmp(cmd, "lap-fwd") == 0;
    const bool dbl = std::strcmp(argv[2], "8") == 0;
    return dbl ? emu::laplacian_file_command<double>(forward, argv[3], argv[4])
               : emu::laplacian_file_command<float>(forward, argv[3], argv[4]);
  }
  return usage();
}
