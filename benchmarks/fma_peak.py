"""The float32 FMA peak of this CPU, measured: clock x FMA instructions per cycle x lanes x 2 flops.

    python -m benchmarks.fma_peak            # clock, FMA throughput and the peak of 1 and of all cores

A small C program (compiled here with the system ``cc``; x86-64 with AVX2/FMA only) measures, on one core
and in thread CPU time (so time the core spends on other processes does not count):

* the clock, from a dependent chain of 1-cycle integer additions;
* the FMA throughput, from 12 independent chains of ``vfmadd231ps`` on ymm registers (enough to cover the
  FMA latency on every x86 core), as FMAs per cycle: 2 on cores with two 256-bit FMA units, 1 on cores
  that split 256-bit operations in two 128-bit halves (AMD family 17h "Zen");
* on CPUs with AVX-512F, the same 12 chains on zmm registers: 2 zmm FMAs per cycle on cores with two 512-bit
  FMA units (Intel Xeon since Skylake-SP), 1 on cores that run 512-bit operations in two 256-bit halves (AMD
  Zen 4), where the zmm peak equals the ymm one;
* the cost of the loads of one step of a GEMM micro-kernel: 12 FMAs alone, with the 6 broadcasts and 2 vector
  loads of a 6 x 16 tile (nn_argmin's AVX2 tile), and with the 4 broadcasts and 3 vector loads of a 4 x 24 tile (its earlier AVX2
  tile), which explains part of the gap between a micro-kernel and the peak.

Peak (GFLOP/s) = clock (GHz) x FMA/cycle x lanes (8 ymm, 16 zmm) x 2 flops, per core, for the ISA the kernels
run (``glann_ext.build_info()["cpu_isa"]``, which ``GLANN_EXT_CPU_ISA=avx2`` caps); the bench tables multiply
it by the threads used (at most the cores). Best of 5 runs of each loop.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import subprocess
import tempfile

_SOURCE = r"""
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static float buf[64] __attribute__((aligned(64)));  /* 256 bytes: every load stays inside */
#define ADD8 "add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\t"
#define F(a, b, c) "vfmadd231ps %%ymm" #a ",%%ymm" #b ",%%ymm" #c "\n\t"
#define FMA12 F(12,14,0) F(12,15,1) F(13,14,2) F(13,15,3) F(12,14,4) F(12,15,5) F(13,14,6) F(13,15,7) \
              F(12,14,8) F(12,15,9) F(13,14,10) F(13,15,11)
#define Z(a, b, c) "vfmadd231ps %%zmm" #a ",%%zmm" #b ",%%zmm" #c "\n\t"
#define ZMA12 Z(12,14,0) Z(12,15,1) Z(13,14,2) Z(13,15,3) Z(12,14,4) Z(12,15,5) Z(13,14,6) Z(13,15,7) \
              Z(12,14,8) Z(12,15,9) Z(13,14,10) Z(13,15,11)
#define CLOBBER "xmm0","xmm1","xmm2","xmm3","xmm4","xmm5","xmm6","xmm7","xmm8","xmm9","xmm10","xmm11","xmm12","xmm13"
int main(void) {
  const long n = 50000000;
  double ghz = 0, fma = 1e9, t616 = 1e9, t424 = 1e9, zmm = 1e9;
  const int avx512 = __builtin_cpu_supports("avx512f");
  for (int r = 0; r < 5; ++r) {
    long x = 0;
    double t0 = now();
    for (long i = 0; i < n; ++i) __asm__ volatile(ADD8 : "+r"(x));
    double g = 8.0 * n / (now() - t0) / 1e9;
    if (g > ghz) ghz = g;
  }
  for (int r = 0; r < 5; ++r) {
    double t0 = now();
    for (long i = 0; i < n; ++i) __asm__ volatile(FMA12 ::: CLOBBER);
    double t1 = now();
    for (long i = 0; i < n; ++i)
      __asm__ volatile("vbroadcastss (%0),%%ymm12\n\tvbroadcastss 4(%0),%%ymm13\n\t"
                       "vmovaps 64(%0),%%ymm14\n\tvmovaps 96(%0),%%ymm15\n\t" FMA12
                       "vbroadcastss 8(%0),%%ymm12\n\tvbroadcastss 12(%0),%%ymm13\n\t"
                       "vbroadcastss 16(%0),%%ymm12\n\tvbroadcastss 20(%0),%%ymm13\n\t"
                       :: "r"(buf) : CLOBBER, "xmm14", "xmm15");
    double t2 = now();
    for (long i = 0; i < n; ++i)
      __asm__ volatile("vbroadcastss (%0),%%ymm12\n\tvbroadcastss 4(%0),%%ymm13\n\t"
                       "vmovaps 64(%0),%%ymm14\n\tvmovaps 96(%0),%%ymm15\n\tvmovaps 128(%0),%%ymm15\n\t" FMA12
                       "vbroadcastss 8(%0),%%ymm12\n\tvbroadcastss 12(%0),%%ymm13\n\t"
                       :: "r"(buf) : CLOBBER, "xmm14", "xmm15");
    double t3 = now();
    if (t1 - t0 < fma) fma = t1 - t0;
    if (t2 - t1 < t616) t616 = t2 - t1;
    if (t3 - t2 < t424) t424 = t3 - t2;
    if (avx512) {
      double t4 = now();
      for (long i = 0; i < n; ++i) __asm__ volatile(ZMA12 ::: CLOBBER);
      if (now() - t4 < zmm) zmm = now() - t4;
    }
  }
  printf("{\"ghz\": %.4f, \"cycles_per_12_fma\": %.3f, \"cycles_6x16_step\": %.3f, \"cycles_4x24_step\": %.3f, "
         "\"cycles_per_12_zmm_fma\": %.3f}\n", ghz, fma * ghz * 1e9 / n, t616 * ghz * 1e9 / n, t424 * ghz * 1e9 / n,
         avx512 ? zmm * ghz * 1e9 / n : -1.0);
  return 0;
}
"""


@functools.cache
def measure() -> dict | None:
    """Clock, FMA/cycle and the per-core float32 peak, or None where it cannot be measured (not x86-64, no
    C compiler, no AVX2/FMA)."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    if platform.machine() not in ("x86_64", "AMD64") or cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = os.path.join(tmp, "fma.c"), os.path.join(tmp, "fma")
        with open(src, "w") as f:
            f.write(_SOURCE)
        try:
            subprocess.run([cc, "-O2", "-o", exe, src], check=True, capture_output=True)
            out = subprocess.run([exe], check=True, capture_output=True, text=True, timeout=120).stdout
        except (subprocess.SubprocessError, OSError):
            return None
    r = json.loads(out)
    r["fma_per_cycle"] = round(12 / r["cycles_per_12_fma"], 2)
    r["peak_gflops_per_core"] = r["ghz"] * r["fma_per_cycle"] * 8 * 2
    if r["cycles_per_12_zmm_fma"] > 0:
        r["zmm_fma_per_cycle"] = round(12 / r["cycles_per_12_zmm_fma"], 2)
        r["peak_gflops_per_core_avx512"] = r["ghz"] * r["zmm_fma_per_cycle"] * 16 * 2
    return r


def kernel_isa() -> str:
    """The CPU ISA glann_ext's kernels run here ("avx512", "avx2", ...; "avx2" if the extension is missing)."""
    try:
        import glann_ext

        return glann_ext.build_info()["cpu_isa"]
    except (ImportError, KeyError):
        return "avx2"


def peak_gflops(threads: int, isa: str | None = None) -> float | None:
    """The float32 FMA peak of ``threads`` cores (at most the cores there are) with the vectors of ``isa``
    (default: :func:`kernel_isa`; zmm for "avx512" where measured, ymm otherwise), or None."""
    r = measure()
    if r is None:
        return None
    per_core = r["peak_gflops_per_core"]
    if (isa or kernel_isa()) == "avx512" and "peak_gflops_per_core_avx512" in r:
        per_core = max(per_core, r["peak_gflops_per_core_avx512"])
    return per_core * max(1, min(threads, os.cpu_count() or 1))


def main() -> None:
    r = measure()
    if r is None:
        print("FMA peak: not measurable here (needs x86-64 with AVX2/FMA and a C compiler)")
        return
    cores = os.cpu_count() or 1
    print(
        f"clock {r['ghz']:.2f} GHz; 12 independent ymm FMAs take {r['cycles_per_12_fma']:.2f} cycles "
        f"({r['fma_per_cycle']:.2f} FMA/cycle); with the loads of a 6 x 16 micro-kernel step "
        f"{r['cycles_6x16_step']:.2f}, of a 4 x 24 step {r['cycles_4x24_step']:.2f}; "
        f"float32 peak {r['peak_gflops_per_core']:.1f} GFLOP/s per core, {r['peak_gflops_per_core'] * cores:.1f} "
        f"on {cores} cores"
    )
    if "zmm_fma_per_cycle" in r:
        print(
            f"AVX-512: 12 independent zmm FMAs take {r['cycles_per_12_zmm_fma']:.2f} cycles "
            f"({r['zmm_fma_per_cycle']:.2f} FMA/cycle): float32 peak {r['peak_gflops_per_core_avx512']:.1f} "
            f"GFLOP/s per core, {r['peak_gflops_per_core_avx512'] * cores:.1f} on {cores} cores"
        )
    print(
        f"the kernels run {kernel_isa()}: the tables divide by {peak_gflops(cores):.1f} GFLOP/s on {cores} cores"
    )


if __name__ == "__main__":
    main()
