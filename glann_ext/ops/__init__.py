"""The kernels as torch ops: argument checks, output allocation and the native calls.

Only this subpackage imports the compiled module; models, trainers and metrics call these ops.

Errors. Arguments are checked in Python before any native call (``TypeError``/``ValueError`` naming the
argument, what was expected and what came; a flag such as ``return_distances`` or ``check_finite_values``
must be a bool or a ``numpy.bool_``, not a value read for its truth). A kernel that fails anyway reports a status, turned into a
typed error by its code (``ops/_native.py``): an invalid argument becomes ``ValueError``, a CUDA error
``RuntimeError`` with the CUDA error string.

Inputs. ``nn_argmin``, ``laplacian_pyramid_loss``, ``project_to_sphere`` and ``project_to_sphere_`` also
take numpy arrays (read through ``torch.from_numpy``, without a copy) and then answer with numpy arrays;
float64 is accepted on CPU and CUDA (computed in float64); float16/bfloat16 are CUDA-only, and a CPU call
with them is refused with the conversion to make.

NaN policy, one for every op. When a floating input holds NaN or Inf, the op raises
:class:`glann_ext.errors.NonFiniteError` (a ``ValueError``) whose ``argument`` names the input and whose
``row`` is its lowest offending row (index along dimension 0: query, key, sample, table or grad row); the
message says ``row N``, or ``sample N (batch index)`` for the images of ``laplacian_pyramid_loss``.
Ops that write in place leave the offending rows unwritten (``project_to_sphere_``) or update nothing at
all (``fused_latent_adam_``, ``fused_latent_sgd_``). The kernels find the offending rows while they read
the data, inside the registered ops: no graph break under ``torch.compile``, and no extra pass but on
CUDA's ``nn_argmin``, which reads its query rows once more (the tensor-core search: its keys too).

* CPU: the op raises when its kernel returns.
* CUDA: ``nn_argmin``, ``laplacian_pyramid_loss`` and ``project_to_sphere(_)`` never synchronise. Their
  kernels lower a flag in device memory; the op copies it to pinned host memory asynchronously and
  returns. The error is raised by the first glann_ext op called after the device has finished the
  offending call (each op looks at finished calls without waiting), or at the latest by
  :func:`raise_deferred_errors` (which waits for all): it names the op that saw the NaN, the argument and
  the row. The results of the offending call are unspecified (``project_to_sphere_``: the bad rows are
  left unwritten as on CPU). Inside CUDA-graph capture (``torch.compile(mode="reduce-overhead")``) no host
  code runs at replay, so there is no check. The latent optimizer steps still synchronise once per call
  on CUDA (the range check of ``indices`` and their de-duplication need it), and read the finiteness of
  ``grad`` in that same synchronisation, before anything is written.

``check_finite_values=False`` (``nn_argmin``, ``laplacian_pyramid_loss``) skips the check; results for
non-finite inputs are then unspecified. Values already in a latent table or its optimizer state are not
checked (that would cost a pass every step).

Transforms. Autograd (``backward``, ``torch.autograd.grad``), ``torch.compile``, fake and meta tensors are
supported, and so are the reverse-mode ``torch.func`` transforms: ``torch.func.grad``, ``jacrev`` and
``vjp`` over ``laplacian_pyramid_loss``, ``project_to_sphere`` and ``nn_argmin``'s distances, and ``vmap``
over all three (per-sample gradients: ``vmap(grad(...))``). Their batching rules flatten the vmapped
entries into one kernel call (``nn_argmin``: when the keys are shared by the entries; keys of their own
take one search per entry), so a NaN error counts rows or samples across the entries. Under a transform the
ops run through an ``autograd.Function`` with ``setup_context``, the form those transforms accept.
``torch.compile`` over a transform (``torch.compile(torch.func.grad(f))``) gives the eager result: dynamo
breaks the graph at the op and runs the transform eagerly, so ``fullgraph=True`` refuses it. Not
supported: forward-mode AD (``jvp``, ``jacfwd``: torch's NotImplementedError) and the in-place ops
(``project_to_sphere_``, the latent optimizer steps), which refuse tensors that require grad.
"""

from ._native import raise_deferred_errors

__all__ = ["raise_deferred_errors"]
