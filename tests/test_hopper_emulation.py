"""The Hopper kernels of issue 15, checked on the CPU (no GPU needed).

tests/cpp/hopper_emulation.cpp includes the GLANN_HD headers that the kernels are made of (index math,
schedules, shared-memory layouts and the block bodies themselves) and runs them on the host: a CUDA block
is emulated by host threads meeting at a barrier where the kernel has ``__syncthreads()``. It is compiled
three times: plainly (the numbers), under AddressSanitizer (shared memory is an exact-size buffer, so a
layout overrun is caught) and under ThreadSanitizer (a missing barrier is a data race). This file compares
what it computes with the package's CPU kernels and the torch references. docs/GPU_KERNELS.md lists what
this proves and what only a GPU run can.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from glann_ext.errors import NonFiniteError
from glann_ext.ops import reference
from glann_ext.ops._native import _C
from glann_ext.ops.laplacian import REDUCTIONS
from glann_ext.ops.reference import default_level_weights

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cpp" / "hopper_emulation.cpp"
SMEM_LIMIT = 232448  # an H100/H200's opt-in shared memory per block (227 KB)
FLAGS = {
    "plain": ["-O2"],
    "asan": ["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"],
    "tsan": ["-O1", "-fsanitize=thread"],
}


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """``emulator(variant)`` -> path of the binary built with FLAGS[variant] (built once per session)."""
    cxx = _compiler()
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, c++, g++ or clang++) to build tests/cpp/hopper_emulation.cpp")
    built: dict[str, Path] = {}
    out_dir = tmp_path_factory.mktemp("emulation")

    def build(variant: str) -> Path:
        if variant not in built:
            exe = out_dir / f"hopper_emulation_{variant}"
            cmd = [cxx, "-std=c++17", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", *FLAGS[variant]]
            cmd += ["-I", str(ROOT / "csrc"), str(SOURCE), "-o", str(exe)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0 and variant != "plain" and "sanitize" in proc.stderr:
                pytest.skip(f"{variant}: this toolchain has no such sanitizer runtime")
            assert proc.returncode == 0, proc.stderr[-4000:]
            built[variant] = exe
        return built[variant]

    return build


def run(exe: Path, *args: object, timeout: float = 300) -> str:
    env = {**os.environ, "TSAN_OPTIONS": "halt_on_error=1", "ASAN_OPTIONS": "detect_leaks=0"}
    proc = subprocess.run(
        [str(exe), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    assert proc.returncode == 0, (
        f"{exe.name} {args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    )
    return proc.stdout


# ---------------------------------------------------------------------------------------------------
# Laplacian: index math, plan, and the fused launch sequence against the CPU pixel path and the reference
# ---------------------------------------------------------------------------------------------------


def test_laplacian_index_math(emulator):
    """reflect101 without division, the 1-D taps of D, U, D^T and U^T (merged, at most five) against the
    definitions in laplacian_math.h for every size up to 300 and every output, level sizes and sign
    offsets against make_geometry, and for_each_pixel's coverage."""
    assert "OK lap-index" in run(emulator("plain"), "lap-index")


def _plan(exe: Path, planes: int, h: int, w: int, levels: int, elem: int, limit: int = SMEM_LIMIT) -> dict:
    out = run(exe, "lap-plan", planes, h, w, levels, elem, limit)
    return {k: int(v) for k, v in (item.split("=") for item in out.split())}


@pytest.mark.parametrize(
    ("b", "c", "h", "w", "levels", "elem", "j0"),
    [
        (64, 1, 28, 28, 5, 4, 0),
        (64, 3, 64, 64, 5, 4, 0),
        (16, 3, 128, 128, 5, 4, 0),
        (16, 3, 256, 256, 5, 4, 1),
        (4, 3, 64, 64, 5, 8, 0),
        (2, 1, 128, 128, 5, 8, 1),
        (1, 1, 5, 5, 3, 4, 0),
        (2, 3, 700, 80, 4, 4, 1),
    ],
)
def test_laplacian_plan_budgets_and_workspace(emulator, b, c, h, w, levels, elem, j0):
    """The plan takes the fused path (j0 = 0: whole pyramid per block; 1: level-0 tiles) within the 227 KB a
    block may have, with at least two plane blocks per SM at 64 x 64 float32, and never needs more workspace
    than the legacy kernels' (_C.laplacian_workspace_bytes, which the Python layer allocates; the backward's
    first 64-byte-aligned b doubles hold the per-sample gradient scales, the kernels get the rest)."""
    p = _plan(emulator("plain"), b * c, h, w, levels, elem)
    assert p["ok"] == 1 and p["j0"] == j0
    assert (
        max(p["forward_smem"], p["backward_smem"], p["tile_forward"], p["tile_up_adj"], p["tile_down_adj"])
        <= SMEM_LIMIT
    )
    if (h, w, elem) == (64, 64, 4):
        assert 2 * p["forward_smem"] <= 228 * 1024
    dtype = 1 if elem == 8 else 0
    for backward, need in ((False, p["forward_bytes"]), (True, p["backward_bytes"])):
        legacy = _C.laplacian_workspace_bytes(b, c, h, w, levels, dtype, True, backward, 1)
        scales = (b * 8 + 63) // 64 * 64 if backward else 0
        assert need <= legacy - scales


def test_laplacian_plan_falls_back_when_nothing_fits(emulator):
    """512 x 512 float32: even the pyramid from level 1 (256 x 256) is past 227 KB, so the legacy kernels
    run (the hook in laplacian.cu asks laplacian_fused_fits first)."""
    assert _plan(emulator("plain"), 3, 512, 512, 5, 4)["ok"] == 0


def test_laplacian_plan_tiles_only_planes_of_five_rows_and_columns(emulator):
    """The level-0 tiles reflect a halo of 4 pixels with reflect101_near, exact for planes of at least 5 x 5:
    a 4-row plane whose level 0 does not fit runs the legacy kernels even where level 1 would fit (found by
    mutation testing: nothing pinned the bound), a 5-row one takes the tiles."""
    exe = emulator("plain")
    assert _plan(exe, 1, 4, 2000, 5, 4, 40000)["ok"] == 0
    assert _plan(exe, 1, 2000, 4, 5, 4, 40000)["ok"] == 0
    five = _plan(exe, 1, 5, 2000, 5, 4, 40000)
    assert five["ok"] == 1 and five["j0"] == 1


def _write_header(path: Path, b, c, h, w, levels, elem, limit) -> bytes:
    return struct.pack("<7q", b, c, h, w, levels, elem, limit)


def _lap_forward(exe, x, y, levels, limit):
    b, c, h, w = x.shape
    elem = x.element_size()
    d = (x - y).double().numpy().tobytes()  # x - y rounded to the compute type, as the kernel forms it
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    src, dst = tmp / f"lapf_in_{os.getpid()}.bin", tmp / f"lapf_out_{os.getpid()}.bin"
    src.write_bytes(_write_header(src, b, c, h, w, levels, elem, limit) + d)
    run(exe, "lap-fwd", elem, src, dst)
    raw = dst.read_bytes()
    j0 = struct.unpack_from("<q", raw)[0]
    per_sample = np.frombuffer(raw, dtype=np.float64, count=b, offset=8)
    signs = np.frombuffer(raw, dtype=np.int8, offset=8 + 8 * b).reshape(b * c, -1)
    return j0, torch.from_numpy(per_sample.copy()), torch.from_numpy(signs.copy())


def _lap_backward(exe, signs, scale, shape, levels, limit, elem):
    b, c, h, w = shape
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    src, dst = tmp / f"lapb_in_{os.getpid()}.bin", tmp / f"lapb_out_{os.getpid()}.bin"
    body = signs.numpy().astype(np.int8).tobytes() + scale.double().numpy().tobytes()
    src.write_bytes(_write_header(src, b, c, h, w, levels, elem, limit) + body)
    run(exe, "lap-bwd", elem, src, dst)
    raw = dst.read_bytes()
    j0 = struct.unpack_from("<q", raw)[0]
    grad = np.frombuffer(raw, dtype=np.float64, offset=8).reshape(b, c, h, w)
    return j0, torch.from_numpy(grad.copy())


LAP_CASES = [
    # (shape, levels, dtype, smem limit, expected j0)
    ((2, 3, 28, 28), 5, torch.float32, SMEM_LIMIT, 0),
    ((1, 2, 64, 64), 5, torch.float32, SMEM_LIMIT, 0),
    ((1, 1, 1, 1), 1, torch.float32, SMEM_LIMIT, 0),
    ((2, 1, 5, 9), 3, torch.float64, SMEM_LIMIT, 0),
    ((1, 1, 7, 1), 4, torch.float64, SMEM_LIMIT, 0),
    ((1, 2, 33, 17), 16, torch.float64, SMEM_LIMIT, 0),
    ((1, 2, 130, 70), 4, torch.float32, 40000, 1),  # level-0 tiles: 3 x 2, the last ones partial
    ((1, 1, 64, 65), 3, torch.float64, 40000, 1),  # a one-column last tile
    ((2, 1, 5, 300), 5, torch.float64, 9000, 1),  # the smallest plane the tiles take (5 rows)
]


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return x, y


def _cpu_pixel_path_forward(
    x: torch.Tensor, y: torch.Tensor, levels: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU pixel path's per-sample sums (unnormalised, the paper's 4^j weights) and its signs."""
    _, c, h, w = x.shape
    none = REDUCTIONS.index("none")
    loss, signs = torch.ops.glann_ext.laplacian_fwd(
        x, y, levels, default_level_weights(levels), none, True, True
    )
    return loss * (c * h * w), signs


@pytest.mark.parametrize(
    ("shape", "levels", "dtype", "limit", "j0"), LAP_CASES, ids=lambda v: str(v).replace(" ", "")
)
def test_laplacian_fused_forward_and_backward(emulator, shape, levels, dtype, limit, j0):
    """The fused launch sequence (plane kernels; level-0 tiles with halos for the j0 = 1 plans) gives the CPU
    pixel path's signs (same layout: the CUDA one), its per-sample loss and, from the same signs, its
    gradient; the loss also matches the torch reference."""
    exe = emulator("plain")
    x, y = _inputs(shape, dtype)
    b, c, h, w = shape
    got_j0, per_sample, signs = _lap_forward(exe, x, y, levels, limit)
    assert got_j0 == j0
    ref_ps, ref_signs = _cpu_pixel_path_forward(x, y, levels)
    assert set(signs.unique().tolist()) <= {-1, 0, 1}, "a sign was never written"
    # Different summation orders flip only signs of |L| at rounding level: none in float64 data.
    agree = (signs == ref_signs).double().mean().item()
    assert agree == 1.0 if dtype == torch.float64 else agree >= 0.9999
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-5}
    torch.testing.assert_close(per_sample, ref_ps.double(), **tol)
    loss = reference.laplacian_pyramid_loss_reference(x.double(), y.double(), levels=levels, reduction="none")
    torch.testing.assert_close(per_sample, loss * (c * h * w), **tol)

    scale = torch.rand(b, dtype=torch.float64).to(dtype) + 0.5
    got_j0, grad = _lap_backward(exe, ref_signs, scale, shape, levels, limit, x.element_size())
    assert got_j0 == j0
    weights = default_level_weights(levels)
    # (B,) grad_loss with reduction "sum" (divisor 1): sample b's gradient is scaled by scale[b] itself.
    sum_ = REDUCTIONS.index("sum")
    ref_grad = torch.ops.glann_ext.laplacian_bwd(
        ref_signs, scale, b, c, h, w, levels, weights, sum_, dtype, True
    )
    torch.testing.assert_close(grad, ref_grad.double(), **tol)


@pytest.mark.parametrize("variant", ["asan", "tsan"])
@pytest.mark.parametrize(
    "case", [LAP_CASES[0], LAP_CASES[6], LAP_CASES[7]], ids=["plane", "tiles", "tiles-odd"]
)
def test_laplacian_fused_is_race_free_and_in_bounds(emulator, variant, case):
    """The same launch sequence under AddressSanitizer (shared memory an exact-size buffer) and
    ThreadSanitizer (each thread of a block a host thread; only the barriers order them)."""
    shape, levels, dtype, limit, j0 = case
    exe = emulator(variant)
    x, y = _inputs(shape, dtype, seed=1)
    assert _lap_forward(exe, x, y, levels, limit)[0] == j0
    _ps, ref_signs = _cpu_pixel_path_forward(x, y, levels)
    scale = torch.ones(shape[0], dtype=dtype)
    assert _lap_backward(exe, ref_signs, scale, shape, levels, limit, x.element_size())[0] == j0


# ---------------------------------------------------------------------------------------------------
# nn_argmin on tensor cores: lane maps, emulated fragments, pipeline, epilogue, plan; 3xTF32 numerics
# ---------------------------------------------------------------------------------------------------


def test_nn_argmin_mma_maps_fragments_pipeline_epilogue_and_plan(emulator):
    """On the CPU, from nn_argmin_mma_math.h: the swizzle is a bijection and every ldmatrix / cp.async phase
    is free of bank conflicts; one stage of a block, loaded through the loader's maps and read with
    ldmatrix and multiplied with mma.sync emulated from their PTX definitions (both the 16-bit and the
    3xTF32 fragments), equals Q K^T; the 4-stage pipeline never computes a step before its copies land nor
    reloads a stage before every thread is done with it; the epilogue (tile fold, quad shuffles, cross-warp
    fold, merge of splits) returns the lowest index of the lowest score with ties, NaN and a partial last
    tile; the split plan covers every (query, key) pair exactly once with int32 in-split indices, within
    the shared-memory budget and the legacy kernel's workspace. Also the CUDA row check's classification
    (nn::RowCheck in nn_argmin_math.h): NaN/Inf first, then a squared norm above max / 4, the bound allowed."""
    out = run(emulator("plain"), "nn-checks")
    assert "OK nn-checks" in out


def _tf32(x: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 of float32 values: round to 10 mantissa bits, ties away from zero."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hi = _tf32(x)
    return hi, _tf32((x.astype(np.float32) - hi).astype(np.float32))


def test_the_kernels_tf32_rounding_is_the_emulations(emulator):
    """tf32_rna_bits (the host copy of cvt.rna.tf32.f32 in nn_argmin_mma_math.h, which the emulated
    fragments use) equals this file's numpy _tf32 bit for bit, ties (low 13 bits 0x1000) away from zero
    included (found by mutation testing: a truncating copy passed every tolerance of the fragment check)."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 300, dtype=np.uint64).astype(np.uint32)
    bits[:100] = (bits[:100] & np.uint32(0xFFFFE000)) | np.uint32(0x1000)  # exact ties
    bits[100:110] = bits[100:110] | np.uint32(0x1FFF)  # carries into the exponent
    finite = bits[(bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)]
    out = run(emulator("plain"), "tf32", *(f"{b:08x}" for b in finite.tolist()))
    got = np.array([int(w, 16) for w in out.split()], dtype=np.uint32)
    assert np.array_equal(got, _tf32(finite.view(np.float32)).view(np.uint32))
    assert run(emulator("plain"), "tf32", "3f801000", "bf801000").split() == ["3f802000", "bf802000"]


def test_3xtf32_split_product_error_is_at_float32_level():
    """hi = tf32(a), lo = tf32(a - hi): hi*hi' + hi*lo' + lo*hi' (each product exact on the tensor cores)
    is within 3 * 2^-22 of a*b for any finite magnitudes, against 2^-24 for one float32 rounding: the
    dropped lo*lo' and the two split residuals, each at most 2^-22 |a b|."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal(200_000) * np.exp2(rng.integers(-60, 60, 200_000))).astype(np.float32)
    b = (rng.standard_normal(200_000) * np.exp2(rng.integers(-60, 60, 200_000))).astype(np.float32)
    (ah, al), (bh, bl) = _split(a), _split(b)
    approx = ah.astype(np.float64) * bh + ah.astype(np.float64) * bl + al.astype(np.float64) * bh
    exact = a.astype(np.float64) * b
    rel = np.abs(approx - exact) / np.abs(exact)
    assert rel.max() <= 3 * 2.0**-22
    assert np.median(rel) < 2.0**-24  # typically far below the bound
    # one TF32 product alone is not float32-level: that is why the kernel takes three
    assert (np.abs(ah.astype(np.float64) * bh - exact) / np.abs(exact)).max() > 2.0**-12


def _scores_3xtf32(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The kernel's float32 scores: accumulators start at -||k||^2 / 2, each m16n8k8 step adds
    lo*hi', hi*lo', hi*hi' of 8 columns (each mma's sum rounded once to float32), score = -2 acc."""
    n, d = q.shape
    kn = (k.astype(np.float32) ** 2).sum(1, dtype=np.float32)
    acc = np.broadcast_to(np.float32(-0.5) * kn, (n, k.shape[0])).astype(np.float32)
    pad = -d % 8
    qp, kp = np.pad(q, ((0, 0), (0, pad))), np.pad(k, ((0, 0), (0, pad)))
    (qh, ql), (kh, kl) = _split(qp), _split(kp)
    for s in range(0, d + pad, 8):
        c = slice(s, s + 8)
        for a, b in ((ql, kh), (qh, kl), (qh, kh)):
            acc = (acc + a[:, c].astype(np.float64) @ b[:, c].astype(np.float64).T).astype(np.float32)
    return np.float32(-2.0) * acc


@pytest.mark.parametrize("d", [1, 7, 17, 100])
def test_3xtf32_scores_keep_the_cuda_tests_ties_and_near_ties(d):
    """The inputs of tests/test_cuda_sizes.py::test_cuda_small_nn_argmin_dtypes_layouts (float32): with the
    kernel's 3xTF32 scores, exact duplicate keys resolve to the lowest index, a query equal to a key finds
    it, every answer is within that test's bound, and the indices equal the float32 CPU kernel's on all
    but near-ties within float32 rounding (documented in nn_argmin's docstring)."""
    import glann_ext

    g = torch.Generator().manual_seed(0)
    q = torch.randn(131, d, generator=g, dtype=torch.float64).float()
    g1 = torch.Generator().manual_seed(1)
    k = torch.randn(517, d, generator=g1, dtype=torch.float64).float()
    k[300], k[516] = k[7], k[7]
    q[0], q[1] = k[7], k[515]
    s = _scores_3xtf32(q.numpy(), k.numpy())
    first = np.argmin(s, axis=1)  # numpy: the first minimum, i.e. the kernel's tie rule
    dup = [int((k == k[j]).all(1).nonzero()[0]) for j in (7, 515)]
    assert first[:2].tolist() == dup
    exact = ((q.double()[:, None, :] - k.double()[None, :, :]) ** 2).sum(-1).numpy()
    rows = np.arange(131)
    scale = (q.double() ** 2).sum(1).numpy() + (k.double() ** 2).sum(1).max().item()
    assert (exact[rows, first] - exact.min(1) <= 2e-6 * scale + 1e-12).all()
    cpu = glann_ext.nn_argmin(q, k).numpy()
    assert (first == cpu).mean() >= 0.99


# ---------------------------------------------------------------------------------------------------
# projection: lane mapping and the row body on a warp of host threads
# ---------------------------------------------------------------------------------------------------


def test_sphere_vec_lane_mapping(emulator):
    """For every D up to 1100 and 2-, 4- and 8-byte elements: lanes per row a power of two, no idle lane
    beyond the row's vectors, every vector of a row covered once, the register slots reach them all;
    the 16-byte path applies only to unit-stride, aligned, whole-vector rows."""
    assert "OK sphere-map" in run(emulator("plain"), "sphere-map")


def _sphere_vec(exe: Path, z: torch.Tensor) -> tuple[int, torch.Tensor]:
    rows, dim = z.shape
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    src, dst = tmp / f"sph_in_{os.getpid()}.bin", tmp / f"sph_out_{os.getpid()}.bin"
    src.write_bytes(struct.pack("<2q", rows, dim) + z.double().numpy().tobytes())
    run(exe, "sphere-vec", z.element_size(), src, dst)
    raw = dst.read_bytes()
    bad = struct.unpack_from("<q", raw)[0]
    out = np.frombuffer(raw, dtype=np.float64, offset=8).reshape(rows, dim)
    return bad, torch.from_numpy(out.copy()).to(z.dtype)


def _special_rows(rows: int, dim: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    big, small = (1e300, 1e-300) if dtype == torch.float64 else (1e30, 1e-30)
    z[1] = 0.0
    z[2, -1] = float("nan")
    z[3] *= big
    z[4] *= small
    z[5] = 0.0
    z[5, 0] = small * 1e-5  # a tiny row with one nonzero lane: the rescaled path's max across lanes
    z[6, 0] = float("inf")
    z[7] *= small
    z[7, -1] = big  # magnitudes 1e600 apart in one row: scaled by its largest, not another lane's
    return z.to(dtype)


@pytest.mark.parametrize(
    ("dtype", "dim"),
    [
        (torch.float32, 4),
        (torch.float32, 64),
        (torch.float32, 100),
        (torch.float32, 1024),
        (torch.float32, 1028),
        (torch.float64, 2),
        (torch.float64, 64),
        (torch.float64, 126),
        (torch.float64, 514),
    ],
    ids=lambda v: str(v).replace("torch.", ""),
)
def test_sphere_vec_rows_match_the_cpu_kernel(emulator, dtype, dim):
    """The row body, in place, on a warp of host threads (several rows per warp for small D, two passes
    past the register slots): the CPU kernel's rows within 1 ulp (float32) / 1e-15 (float64), zero rows to
    1/sqrt(D), huge and tiny rows through the rescaled path, NaN and Inf rows unwritten and the lowest one
    reported."""
    z = _special_rows(37, dim, dtype)
    bad, got = _sphere_vec(emulator("plain"), z)
    assert bad == 2
    assert torch.equal(got[2].isnan(), z[2].isnan()) and torch.equal(got[6], z[6])
    finite = [r for r in range(37) if r not in (2, 6)]
    ref = z.clone()
    with pytest.raises(NonFiniteError):
        import glann_ext

        glann_ext.project_to_sphere_(ref)
    tol = {"rtol": 1.2e-7, "atol": 1e-30} if dtype == torch.float32 else {"rtol": 1e-15, "atol": 0.0}
    torch.testing.assert_close(got[finite], ref[finite], **tol)
    torch.testing.assert_close(got[1], torch.full((dim,), dim**-0.5, dtype=dtype), **tol)


@pytest.mark.parametrize("variant", ["asan", "tsan"])
@pytest.mark.parametrize(("dtype", "dim"), [(torch.float32, 16), (torch.float32, 12), (torch.float64, 10)])
def test_sphere_vec_is_race_free_and_in_bounds(emulator, variant, dtype, dim):
    """Segments of one warp take different paths (a NaN row, a rescaled row, plain rows): per-segment
    shuffles under ThreadSanitizer and AddressSanitizer. With 3 or 5 vectors a row, a segment of 4 or 8
    lanes has idle lanes, which must not read past the last row (found by mutation testing)."""
    bad, _ = _sphere_vec(emulator(variant), _special_rows(9, dim, dtype, seed=2))
    assert bad == 2
