# Type stub of the compiled module, true for every build (with or without CUDA: a build without CUDA
# defines the CUDA entry points too, and they raise StatusError UNSUPPORTED). Written from
# pybind11-stubgen glann_ext._C with ints simplified; tests/test_native.py checks it lists exactly the
# module's names. Update it when a binding changes.
"""
glann_ext native kernels (framework-free; tensors are passed as pointers by glann_ext.ops)
"""

import collections.abc
import typing

__all__: list[str] = [
    "StatusCode",
    "StatusError",
    "cpu_isa",
    "cuda_compiled",
    "cuda_kernels",
    "cuda_runtime_version",
    "default_cuda_kernels",
    "hardware_threads",
    "laplacian_backward",
    "laplacian_cpu_path",
    "laplacian_forward",
    "laplacian_plane_elems",
    "laplacian_workspace_bytes",
    "latent_step",
    "nn_argmin",
    "nn_argmin_cpu_path",
    "nn_argmin_cpu_workspace_bytes",
    "nn_argmin_cuda_workspace_bytes",
    "nn_argmin_merge",
    "project_to_sphere",
    "set_cuda_kernels",
    "sphere_cpu_path",
]

# (cuda, device, stream, num_threads): csrc/common/exec.h's ExecContext, from ops._native.exec_context().
_Exec: typing.TypeAlias = tuple[bool, int, int, int]
_Strides: typing.TypeAlias = collections.abc.Sequence[int]

class StatusCode:
    """
    glann::StatusCode (csrc/common/status.h).
    """

    OK: typing.ClassVar[StatusCode]
    INVALID_ARGUMENT: typing.ClassVar[StatusCode]
    NON_FINITE: typing.ClassVar[StatusCode]
    CUDA_ERROR: typing.ClassVar[StatusCode]
    UNSUPPORTED: typing.ClassVar[StatusCode]
    def __init__(self, value: int) -> None: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class StatusError(RuntimeError):
    """
    A kernel launcher failed: code (StatusCode), message, detail (e.g. the lowest offending row, -1 if none), input (for NON_FINITE: which input of the launcher the row belongs to, 0 = the first; -1 if none).
    """

    code: StatusCode
    message: str
    detail: int
    input: int

def cpu_isa() -> str:
    """
    SIMD level the CPU kernels use on this machine: baseline, avx2 or avx512.
    """

def cuda_kernels() -> str:
    """
    The CUDA kernels the ops run: 'legacy', 'hopper' or 'hopper:OP[,OP...]' (GLANN_EXT_CUDA_KERNELS, or the last set_cuda_kernels); raises ValueError for an unparsable GLANN_EXT_CUDA_KERNELS.
    """

def cuda_runtime_version() -> int:
    """
    CUDA runtime version the module was built with (e.g. 13000); 0 in a build without CUDA.
    """

def default_cuda_kernels() -> str:
    """
    The CUDA kernels the ops run without GLANN_EXT_CUDA_KERNELS, in cuda_kernels' spelling.
    """

def hardware_threads() -> int:
    """
    Hardware threads available to the process.
    """

def laplacian_backward(
    dtype: int,
    signs: int,
    grad_loss: int,
    grad_loss_stride: int,
    loss_divisor: float,
    grad: int,
    batch: int,
    channels: int,
    height: int,
    width: int,
    levels: int,
    level_weights: collections.abc.Sequence[float],
    workspace: int,
    workspace_bytes: int,
    pixel_path: bool,
    exec: _Exec,
) -> None:
    """
    grad (B, C, H, W) contiguous = adjoint of the pyramid applied to the signs, each sample's scaled by grad_loss[b * grad_loss_stride] / loss_divisor.
    """

def laplacian_cpu_path() -> str:
    """
    SIMD copy of the CPU kernels in use.
    """

def laplacian_forward(
    dtype: int,
    x: int,
    x_strides: _Strides,
    y: int,
    y_strides: _Strides,
    batch: int,
    channels: int,
    height: int,
    width: int,
    levels: int,
    level_weights: collections.abc.Sequence[float],
    per_sample: int,
    loss: int,
    sum_samples: bool,
    loss_divisor: float,
    signs: int,
    workspace: int,
    workspace_bytes: int,
    pixel_path: bool,
    check_finite: bool,
    nonfinite_samples: int,
    exec: _Exec,
) -> None:
    """
    Per-sample sum_j w_j sum|L^j| of x - y into per_sample (B,), the loss from them into loss (their sum, or each, over loss_divisor), signs of every level into signs; NaN/Inf in a sample with check_finite: CPU StatusError NON_FINITE (input 0 x, 1 y), CUDA the int64[2] at nonfinite_samples lowered.
    """

def laplacian_plane_elems(height: int, width: int, levels: int) -> int:
    """
    Sign elements per (b, c) plane: sum_j h_j * w_j.
    """

def laplacian_workspace_bytes(
    batch: int,
    channels: int,
    height: int,
    width: int,
    levels: int,
    dtype: int,
    cuda: bool,
    backward: bool,
    num_threads: int,
) -> int: ...
def latent_step(
    dtype: int,
    optimizer: int,
    table: int,
    exp_avg: int,
    exp_avg_sq: int,
    table_strides: _Strides,
    table_rows: int,
    dim: int,
    indices: int,
    indices_strides: _Strides,
    grad: int,
    grad_strides: _Strides,
    batch: int,
    one_minus_beta1: float,
    one_minus_beta2: float,
    eps: float,
    neg_step_size: float,
    neg_lr: float,
    project: bool,
    exec: _Exec,
) -> None:
    """
    Fused sparse Adam (optimizer=0) or SGD (optimizer=1) step on unique table rows, optionally re-projected onto the unit sphere (see csrc/sphere/sphere.h).
    """

def nn_argmin(
    dtype: int,
    queries: int,
    n_queries: int,
    dim: int,
    queries_strides: _Strides,
    keys: int,
    n_keys: int,
    keys_strides: _Strides,
    key_offset: int,
    best_score: int,
    best_index: int,
    check_queries: bool,
    check_keys: bool,
    nonfinite_rows: int,
    workspace: int,
    workspace_bytes: int,
    exec: _Exec,
) -> None:
    """
    Folds the keys into the running best (score ||k||^2 - 2 q.k, global index) of every query row; NaN/Inf in checked rows: CPU StatusError NON_FINITE (input 0 queries, 1 keys), CUDA the int64[4] at nonfinite_rows lowered: [0]/[1] queries'/keys' NaN/Inf rows, [2]/[3] their finite rows whose squared norm could overflow the scores (see csrc/nn_argmin/nn_argmin.h).
    """

def nn_argmin_cpu_path() -> str:
    """
    SIMD copy of the CPU micro-kernel in use.
    """

def nn_argmin_cpu_workspace_bytes(
    n_queries: int, n_keys: int, dim: int, dtype: int, num_threads: int
) -> int: ...
def nn_argmin_cuda_workspace_bytes(n_queries: int, n_keys: int, dim: int, device: int) -> int:
    """
    Workspace bytes of one CUDA call (raises StatusError UNSUPPORTED in a build without CUDA).
    """

def nn_argmin_merge(
    score_dtype: int,
    score: int,
    index: int,
    n_queries: int,
    key_offset: int,
    best_score: int,
    best_index: int,
    exec: _Exec,
) -> None:
    """
    Folds one candidate (score, index + key_offset) per query row into the running best, by the same rule.
    """

def project_to_sphere(
    dtype: int,
    in_: int,
    in_strides: _Strides,
    out: int,
    out_strides: _Strides,
    rows: int,
    dim: int,
    first_bad_row: int,
    exec: _Exec,
) -> None:
    """
    Rows to unit L2 norm (see csrc/sphere/sphere.h). CPU: StatusError NON_FINITE, detail = the first non-finite row. CUDA: that row is written to the int64 at first_bad_row (initialised to rows).
    """

def set_cuda_kernels(spec: str) -> None:
    """
    Chooses the CUDA kernels for the rest of the process (tests and benchmarks).
    """

def sphere_cpu_path() -> str:
    """
    SIMD copy of the CPU kernels in use.
    """

__version__: str
cuda_compiled: bool
