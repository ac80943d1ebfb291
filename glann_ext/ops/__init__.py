"""The kernels as torch ops: argument checks, output allocation and the native calls.

Only this subpackage imports the compiled module; models, trainers and metrics call these ops.

Errors. Arguments are checked in Python before any native call (``TypeError``/``ValueError`` naming the
argument, what was expected and what came). A kernel that fails anyway reports a status, turned into a
typed error by its code (``ops/_native.py``): an invalid argument becomes ``ValueError``, a CUDA error
``RuntimeError`` with the CUDA error string.

NaN policy, one for every op. When a floating input holds NaN or Inf, the op raises
:class:`glann_ext.errors.NonFiniteError` (a ``ValueError``) whose ``argument`` names the input and whose
``row`` is its lowest offending row (index along dimension 0: query, key, sample, table or grad row).
Ops that write in place leave the offending rows unwritten (``project_to_sphere_``) or update nothing at
all (``fused_latent_adam_``, ``fused_latent_sgd_``). Where the check costs a pass over the data, a
``check_finite_values=False`` argument skips it (``nn_argmin``; ``laplacian_pyramid_loss``, whose check
costs a synchronisation on CUDA) and the result for non-finite inputs is then unspecified. On CUDA, a
check whose flag the host must read costs one synchronisation, and is skipped inside CUDA-graph capture
(``torch.compile(mode="reduce-overhead")``), where no synchronisation is allowed. Values already in a
latent table or its optimizer state are not checked (that would cost a pass every step).
"""
