"""The binding layer: every build exposes what glann_ext/_C.pyi declares, a failed kernel status keeps
its code and detail, and glann_ext.ops turns it into the typed error by its code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import glann_ext
from glann_ext._ext import _C
from glann_ext.errors import NonFiniteError
from glann_ext.ops import _native

CPU = (False, 0, 0, 1)  # ExecContext: CPU, one thread


def _stub_names() -> tuple[list[str], set[str]]:
    tree = ast.parse((Path(glann_ext.__file__).parent / "_C.pyi").read_text())
    declared = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "__all__"
    )
    defined = {getattr(n, "name", None) or getattr(getattr(n, "target", None), "id", None) for n in tree.body}
    return declared, defined


def test_stub_is_true_for_this_build() -> None:
    declared, defined = _stub_names()
    public = {name for name in dir(_C) if not name.startswith("_")}
    assert set(declared) == public
    assert set(declared) <= defined
    assert "cuda_device_count" not in public  # removed: nothing used it


def _status_error(fn, *args) -> _C.StatusError:
    with pytest.raises(_C.StatusError) as info:
        fn(*args)
    return info.value


def test_status_error_keeps_code_message_and_detail() -> None:
    z = torch.randn(9, 4)
    z[6, 1] = float("nan")
    out = torch.empty_like(z)
    err = _status_error(
        _C.project_to_sphere, _native.dtype_code(z), z.data_ptr(), z.stride(), out.data_ptr(), out.stride(),
        9, 4, 0, CPU,
    )  # fmt: skip
    assert isinstance(err, RuntimeError)
    assert err.code == _C.StatusCode.NON_FINITE and err.detail == 6
    assert err.message == "row 6 contains NaN or Inf" and str(err) == err.message


def test_invalid_argument_status_has_no_detail() -> None:
    q, k = torch.randn(4, 3), torch.randn(5, 3)
    best = torch.full((4,), float("inf")), torch.zeros(4, dtype=torch.int64)
    err = _status_error(
        _C.nn_argmin, 0, q.data_ptr(), 4, 3, q.stride(), k.data_ptr(), 5, k.stride(), 0,
        best[0].data_ptr(), best[1].data_ptr(), 0, 0, CPU,  # no workspace
    )  # fmt: skip
    assert err.code == _C.StatusCode.INVALID_ARGUMENT and err.detail == -1
    assert "workspace too small" in err.message


@pytest.mark.skipif(bool(_C.cuda_compiled), reason="the build has CUDA kernels")
def test_cuda_entry_points_exist_without_cuda() -> None:
    err = _status_error(_C.nn_argmin_cuda_workspace_bytes, 10, 10, 4, 0)
    assert err.code == _C.StatusCode.UNSUPPORTED and "built without CUDA" in err.message
    score, index = torch.zeros(2), torch.zeros(2, dtype=torch.int64)
    err = _status_error(
        _C.nn_argmin_merge, score.data_ptr(), index.data_ptr(), 2, 0, score.data_ptr(), index.data_ptr(),
        (True, 0, 0, 1),
    )  # fmt: skip
    assert err.code == _C.StatusCode.UNSUPPORTED


def _error(code, message="boom", detail=-1) -> _C.StatusError:
    err = _C.StatusError(message)
    err.code, err.message, err.detail = code, message, detail
    return err


@pytest.mark.parametrize(
    "code,detail,kind,text",
    [
        (_C.StatusCode.NON_FINITE, 3, NonFiniteError, "op: z row 3 contains NaN or Inf"),
        (_C.StatusCode.NON_FINITE, -1, NonFiniteError, "op: z contains NaN or Inf"),
        (_C.StatusCode.INVALID_ARGUMENT, -1, ValueError, "op: boom"),
        (_C.StatusCode.CUDA_ERROR, -1, RuntimeError, "op: boom"),
        (_C.StatusCode.UNSUPPORTED, -1, RuntimeError, "op: boom"),
    ],
)
def test_status_maps_to_typed_error_by_code(code, detail, kind, text) -> None:
    with pytest.raises(kind) as info, _native.native_call("op", torch.zeros(1), argument="z"):
        raise _error(code, detail=detail)
    assert type(info.value) is kind and str(info.value) == text
    if kind is NonFiniteError:
        assert info.value.argument == "z" and info.value.row == (detail if detail >= 0 else None)


def test_exec_context_on_cpu() -> None:
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert _native.exec_context(torch.zeros(1)) == (False, 0, 0, 3)
    finally:
        torch.set_num_threads(old)
