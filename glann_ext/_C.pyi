# Type stub of the compiled module (CUDA build), generated with pybind11-stubgen glann_ext._C and
# ints simplified. Regenerate when a binding changes.
"""
glann_ext native kernels (framework-free; tensors are passed as pointers by glann_ext.ops)
"""

import collections.abc
import typing

__all__: list[str] = [
    "cpu_isa",
    "cuda_compiled",
    "cuda_device_count",
    "cuda_runtime_version",
    "hardware_threads",
    "laplacian_backward",
    "laplacian_forward",
    "laplacian_plane_elems",
    "laplacian_workspace_bytes",
    "latent_step",
    "nn_argmin",
    "nn_argmin_cpu_path",
    "nn_argmin_cpu_workspace_bytes",
    "nn_argmin_cuda_workspace_bytes",
    "project_to_sphere",
]

def cpu_isa() -> str:
    """
    SIMD level the CPU kernels use on this machine: baseline, avx2 or avx512.
    """

def cuda_device_count() -> int:
    """
    CUDA devices visible to the module's runtime (0 when there is no driver or GPU).
    """

def cuda_runtime_version() -> int:
    """
    CUDA runtime version the module was built with (e.g. 13000).
    """

def hardware_threads() -> int: ...
def laplacian_backward(
    signs: int,
    grad_scale: int,
    grad: int,
    batch: int,
    channels: int,
    height: int,
    width: int,
    levels: int,
    dtype: int,
    workspace: int,
    workspace_bytes: int,
    num_threads: int,
    cuda: bool,
    stream: int,
    pixel_path: bool = False,
) -> None:
    """
    grad (B, C, H, W) contiguous = adjoint of the pyramid applied to the signs.
    """

def laplacian_forward(
    x: int,
    x_strides: collections.abc.Sequence[int],
    y: int,
    y_strides: collections.abc.Sequence[int],
    batch: int,
    channels: int,
    height: int,
    width: int,
    levels: int,
    dtype: int,
    per_sample: int,
    signs: int,
    workspace: int,
    workspace_bytes: int,
    num_threads: int,
    cuda: bool,
    stream: int,
    pixel_path: bool = False,
) -> None:
    """
    Per-sample sum_j 4^j sum|L^j| of x - y into per_sample (B,), signs of every level into signs.
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
    table_rows: int,
    dim: int,
    table_row_stride: int,
    indices: int,
    index_stride: int,
    grad: int,
    grad_row_stride: int,
    grad_col_stride: int,
    batch: int,
    one_minus_beta1: typing.SupportsFloat | typing.SupportsIndex,
    one_minus_beta2: typing.SupportsFloat | typing.SupportsIndex,
    eps: typing.SupportsFloat | typing.SupportsIndex,
    neg_step_size: typing.SupportsFloat | typing.SupportsIndex,
    neg_lr: typing.SupportsFloat | typing.SupportsIndex,
    project: bool,
    cuda: bool,
    stream: int,
    num_threads: int,
) -> None:
    """
    Fused sparse Adam (optimizer=0) or SGD (optimizer=1) step on unique table rows, optionally re-projected onto the unit sphere (see csrc/sphere/sphere.h).
    """

def nn_argmin(
    on_cuda: bool,
    queries: int,
    n: int,
    d: int,
    q_stride_row: int,
    q_stride_col: int,
    keys: int,
    m: int,
    k_stride_row: int,
    k_stride_col: int,
    dtype: int,
    best_score: int,
    best_index: int,
    workspace: int,
    workspace_bytes: int,
    num_threads: int,
    stream: int,
    device: int,
) -> None:
    """
    Lowest-index argmin of ||k||^2 - 2 q.k over the keys for every query row (see csrc/nn_argmin/nn_argmin.h).
    """

def nn_argmin_cpu_path() -> str: ...
def nn_argmin_cpu_workspace_bytes(n: int, m: int, d: int, num_threads: int) -> int: ...
def nn_argmin_cuda_workspace_bytes(n: int, m: int, d: int, device: int) -> int: ...
def project_to_sphere(
    dtype: int,
    in_ptr: int,
    out_ptr: int,
    rows: int,
    dim: int,
    in_row_stride: int,
    in_col_stride: int,
    out_row_stride: int,
    out_col_stride: int,
    cuda: bool,
    stream: int,
    first_bad_row: int,
    num_threads: int,
) -> None:
    """
    Rows to unit L2 norm (see csrc/sphere/sphere.h). CPU: ValueError naming the first non-finite row. CUDA: the first non-finite row is written to the int64 at first_bad_row (initialised to rows).
    """

__version__: str = "0.1.0"
cuda_compiled: bool = True
