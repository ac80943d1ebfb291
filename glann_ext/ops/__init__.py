"""The kernels as torch ops: argument checks, output allocation and the native calls.

Only this subpackage imports the compiled module; models, trainers and metrics call these ops.
"""
