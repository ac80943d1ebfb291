"""The binding layer: every build exposes what glann_ext/_C.pyi declares, a failed kernel status keeps
its code and detail, and glann_ext.ops turns it into the typed error by its code."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from glann_testing import RecordOps, child_kwargs, hardware_cpu_isa

import glann_ext
import glann_ext.ops
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
        best[0].data_ptr(), best[1].data_ptr(), True, True, 0, 0, 0, CPU,  # no workspace
    )  # fmt: skip
    assert err.code == _C.StatusCode.INVALID_ARGUMENT and err.detail == -1 and err.input == -1
    assert "workspace too small" in err.message


@pytest.mark.parametrize("bad", ["queries", "keys", "both"])
def test_non_finite_status_names_the_input(bad) -> None:
    """NON_FINITE carries which launcher input the row belongs to (0 = queries, 1 = keys), queries first."""
    q, k = torch.randn(7, 3), torch.randn(50, 3)
    if bad in ("queries", "both"):
        q[4, 2] = float("inf")
    if bad in ("keys", "both"):
        k[31, 0] = float("nan")
        k[40, 1] = float("nan")
    best = torch.full((7,), float("inf")), torch.zeros(7, dtype=torch.int64)
    nbytes = _C.nn_argmin_cpu_workspace_bytes(7, 50, 3, 0, 1)
    ws = torch.empty(nbytes, dtype=torch.uint8)
    err = _status_error(
        _C.nn_argmin, 0, q.data_ptr(), 7, 3, q.stride(), k.data_ptr(), 50, k.stride(), 0,
        best[0].data_ptr(), best[1].data_ptr(), True, True, 0, ws.data_ptr(), nbytes, CPU,
    )  # fmt: skip
    assert err.code == _C.StatusCode.NON_FINITE
    assert (err.input, err.detail) == ((1, 31) if bad == "keys" else (0, 4))


@pytest.mark.parametrize("nan_grad", [False, True])
def test_latent_step_refuses_the_first_index_out_of_range(nan_grad) -> None:
    """The kernel's own range check (the ops check first; this guards the table against a direct call):
    an index equal to the row count is out of range, the lowest bad position is named, it comes before a
    NaN grad, and nothing is written."""
    table, grad = torch.randn(5, 3), torch.randn(3, 3)
    if nan_grad:
        grad[0, 1] = float("nan")
    before = table.clone()
    idx = torch.tensor([0, 5, -1])
    err = _status_error(
        _C.latent_step, _native.dtype_code(table), 1, table.data_ptr(), 0, 0, table.stride(), 5, 3,
        idx.data_ptr(), idx.stride(), grad.data_ptr(), grad.stride(), 3, 0.1, 0.001, 1e-8, -0.1, -0.1, True, CPU,
    )  # fmt: skip
    assert err.code == _C.StatusCode.INVALID_ARGUMENT and err.detail == 1
    assert err.message == "indices[1] = 5 is out of range for a table of 5 rows"
    assert torch.equal(table, before)


def test_laplacian_binding_needs_one_weight_per_level() -> None:
    """The binding copies the weights into a fixed array of 16: a list of another length is refused there
    (the ops check it first; this guards against reading past the list in a direct call)."""
    x = torch.randn(1, 1, 8, 8)
    for weights in ([1.0, 4.0], [1.0] * 4):
        with pytest.raises(ValueError, match="one weight per level"):
            _C.laplacian_forward(
                _native.dtype_code(x), x.data_ptr(), x.stride(), x.data_ptr(), x.stride(), 1, 1, 8, 8, 3, weights,
                0, 0, True, 64.0, 0, 0, 0, False, False, 0, CPU,
            )  # fmt: skip


@pytest.mark.skipif(bool(_C.cuda_compiled), reason="the build has CUDA kernels")
def test_cuda_entry_points_exist_without_cuda() -> None:
    err = _status_error(_C.nn_argmin_cuda_workspace_bytes, 10, 10, 4, 0)
    assert err.code == _C.StatusCode.UNSUPPORTED and "built without CUDA" in err.message
    score, index = torch.zeros(2), torch.zeros(2, dtype=torch.int64)
    err = _status_error(
        _C.nn_argmin_merge, 0, score.data_ptr(), index.data_ptr(), 2, 0, score.data_ptr(), index.data_ptr(),
        (True, 0, 0, 1),
    )  # fmt: skip
    assert err.code == _C.StatusCode.UNSUPPORTED


def _error(code, message="boom", detail=-1, which=-1) -> _C.StatusError:
    err = _C.StatusError(message)
    err.code, err.message, err.detail, err.input = code, message, detail, which
    return err


@pytest.mark.parametrize(
    ("code", "detail", "which", "kind", "text"),
    [
        (_C.StatusCode.NON_FINITE, 3, 0, NonFiniteError, "op: z row 3 contains NaN or Inf"),
        (_C.StatusCode.NON_FINITE, -1, 0, NonFiniteError, "op: z contains NaN or Inf"),
        (_C.StatusCode.NON_FINITE, 2, 1, NonFiniteError, "op: w row 12 contains NaN or Inf"),
        # a kernel that does not say which input (-1) means the first, not the last
        (_C.StatusCode.NON_FINITE, 3, -1, NonFiniteError, "op: z row 3 contains NaN or Inf"),
        (_C.StatusCode.INVALID_ARGUMENT, -1, -1, ValueError, "op: boom"),
        (_C.StatusCode.CUDA_ERROR, -1, -1, RuntimeError, "op: boom"),
        (_C.StatusCode.UNSUPPORTED, -1, -1, RuntimeError, "op: boom"),
    ],
)
def test_status_maps_to_typed_error_by_code(code, detail, which, kind, text) -> None:
    with (
        pytest.raises(kind) as info,
        _native.native_call("op", torch.zeros(1), arguments=("z", "w"), row_offsets=(0, 10)),
    ):
        raise _error(code, detail=detail, which=which)
    assert type(info.value) is kind and str(info.value) == text
    if kind is NonFiniteError:
        name, row = ("w", detail + 10) if which == 1 else ("z", detail if detail >= 0 else None)
        assert info.value.argument == name and info.value.row == row


class _FakeEvent:
    """A CUDA event stand-in: done or not, and whether someone waited for it."""

    def __init__(self, done: bool) -> None:
        self.done, self.waited = done, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited, self.done = True, True


def _flags_error(values: list[int]) -> Exception | None:
    return (
        None
        if values[0] == _native.NO_ROW
        else NonFiniteError(f"row {values[0]}", argument="z", row=values[0])
    )


def test_deferred_flags_raise_when_their_call_has_finished(monkeypatch) -> None:
    """The machinery behind CUDA's deferred NaN errors (without a GPU: events and pinned copies faked).
    A finished call with a flag raises at the next look; an unfinished one waits for a later look, or for
    raise_deferred_errors(wait=True); a clean call raises nothing and is forgotten."""
    pending: list = []
    monkeypatch.setattr(_native, "_DEFERRED", pending)
    clean, late, bad = _FakeEvent(True), _FakeEvent(False), _FakeEvent(True)
    pending += [
        _native._Deferred(clean, torch.tensor([_native.NO_ROW]), _flags_error),
        _native._Deferred(late, torch.tensor([7]), _flags_error),
        _native._Deferred(bad, torch.tensor([3]), _flags_error),
    ]
    # Every op looks first, without waiting.
    with pytest.raises(NonFiniteError, match="row 3"), _native.native_call("op", torch.zeros(1)):
        pass
    assert [d.event for d in pending] == [late] and not late.waited
    _native.raise_deferred_errors()  # still running: nothing yet
    assert len(pending) == 1
    with pytest.raises(NonFiniteError, match="row 7"):
        glann_ext.ops.raise_deferred_errors(wait=True)
    assert late.waited and not pending
    glann_ext.ops.raise_deferred_errors(wait=True)  # nothing left


def test_of_several_finished_calls_with_flags_the_earliest_is_raised(monkeypatch) -> None:
    """raise_deferred_errors raises the error of the earliest call (the first NaN/Inf the user's code met);
    the later ones are dropped with it, not raised at the next op."""
    pending: list = []
    monkeypatch.setattr(_native, "_DEFERRED", pending)
    pending += [
        _native._Deferred(_FakeEvent(True), torch.tensor([_native.NO_ROW]), _flags_error),
        _native._Deferred(_FakeEvent(True), torch.tensor([4]), _flags_error),
        _native._Deferred(_FakeEvent(True), torch.tensor([9]), _flags_error),
    ]
    with pytest.raises(NonFiniteError, match="row 4"):
        _native.raise_deferred_errors()
    assert not pending
    _native.raise_deferred_errors()


def test_flags_raise_at_once_on_cpu() -> None:
    _native.raise_flags(torch.tensor([_native.NO_ROW]), _flags_error)
    with pytest.raises(NonFiniteError, match="row 5"):
        _native.raise_flags(torch.tensor([5]), _flags_error)


def test_plain_tensors_only_for_real_eager_tensors() -> None:
    """The ops' eager fast path (straight to the implementation) takes plain CPU tensors only: meta tensors,
    subclasses, torch.func wrappers and dispatch modes go through the registered op."""

    class Sub(torch.Tensor):
        pass

    t = torch.ones(3)
    assert _native.plain_tensors(t, torch.zeros(2))
    assert not _native.plain_tensors(t, torch.ones(3, device="meta"))
    assert not _native.plain_tensors(t.as_subclass(Sub))
    seen = []
    torch.func.vmap(lambda row: seen.append(_native.plain_tensors(row)) or row)(torch.ones(2, 3))
    assert seen == [False]

    with RecordOps():
        assert not _native.plain_tensors(t)


def test_exec_context_on_cpu() -> None:
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert _native.exec_context(torch.zeros(1)) == (False, 0, 0, 3)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize(
    ("preset", "first", "want"),
    [
        (None, "glann_ext", "PASSIVE"),
        ("ACTIVE", "glann_ext", "ACTIVE"),
        (None, "torch", "default (torch was imported before glann_ext)"),
    ],
)
def test_openmp_wait_policy_default(preset, first, want, tmp_path) -> None:
    """glann_ext sets OMP_WAIT_POLICY=PASSIVE when it is imported before torch (libgomp reads it once, when
    torch loads it) and nothing was set; a user's value wins; build_info says what applies."""
    import subprocess
    import sys

    from glann_testing import child_kwargs

    env = {} if preset is None else {"OMP_WAIT_POLICY": preset}
    kwargs = child_kwargs(tmp_path, **env)
    if preset is None:
        kwargs["env"] = {k: v for k, v in kwargs["env"].items() if k != "OMP_WAIT_POLICY"}
    code = f"import {first}, glann_ext; print(glann_ext.build_info()['omp_wait_policy'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, **kwargs)
    assert out.stdout.strip() == want


def _under_cpu_isa(tmp_path, isa: str, code: str):
    """``import glann_ext`` then ``code`` in a child Python with ``GLANN_EXT_CPU_ISA=isa``."""
    import subprocess
    import sys

    from glann_testing import child_kwargs

    return subprocess.run(
        [sys.executable, "-c", "import glann_ext; " + code],
        check=False,
        capture_output=True,
        text=True,
        **child_kwargs(tmp_path, GLANN_EXT_CPU_ISA=isa),
    )


@pytest.mark.parametrize(
    ("value", "want"), [("bogus", None), ("AVX2", None), ("baseline", "baseline"), ("", "")]
)
def test_unknown_cpu_isa_variable_fails_the_import(tmp_path, value, want):
    """GLANN_EXT_CPU_ISA=bogus was ignored silently (an unknown GLANN_EXT_CUDA_KERNELS already failed the
    import); now it fails the import with a ValueError naming the value and the valid ones."""
    out = _under_cpu_isa(tmp_path, value, "from glann_ext._ext import _C; print(_C.cpu_isa())")
    if want is None:
        assert out.returncode != 0
        assert f"ValueError: GLANN_EXT_CPU_ISA='{value}' is not baseline, avx2 or avx512" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == (want or hardware_cpu_isa())


@pytest.mark.parametrize("cap", ["baseline", "avx2", "avx512"])
def test_each_kernel_family_runs_the_best_copy_it_has_under_the_cap(tmp_path, cap):
    """build_info's cpu_kernels: nn_argmin and the Laplacian have baseline, AVX2 and AVX-512 copies, the
    sphere kernels no AVX-512 one (so an AVX-512 CPU runs their AVX2 copy, not the baseline: a dispatch
    that fell to the baseline there gave the same bits, only slower, and nothing showed it)."""
    import json

    out = _under_cpu_isa(
        tmp_path, cap, "import json; print(json.dumps(glann_ext.build_info()['cpu_kernels']))"
    )
    assert out.returncode == 0, out.stderr
    order = ["baseline", "avx2", "avx512"]
    best = min(order.index(cap), order.index(hardware_cpu_isa()))
    assert json.loads(out.stdout) == {
        "nn_argmin": order[best],
        "laplacian": order[best],
        "sphere": order[min(best, 1)],
    }


# Found by a mutation test of the kernels (2026-12-07): checks in the launchers and bindings that the ops
# never let an argument reach, called directly.


def test_nn_argmin_binding_refuses_empty_keys(tmp_path):
    """The launcher's own check of n_keys (the ops refuse empty keys first). Run in a child: without the
    check a direct call with 0 keys divides by zero in the plan (SIGFPE) and would take pytest down."""
    script = textwrap.dedent(
        """
        import torch
        from glann_ext.ops._native import _C
        q, k = torch.randn(4, 3), torch.randn(1, 3)
        best = torch.full((4,), float("inf")), torch.zeros(4, dtype=torch.int64)
        ws = torch.empty(1 << 16, dtype=torch.uint8)
        try:
            _C.nn_argmin(0, q.data_ptr(), 4, 3, q.stride(), k.data_ptr(), 0, k.stride(), 0, best[0].data_ptr(),
                         best[1].data_ptr(), True, True, 0, ws.data_ptr(), ws.numel(), (False, 0, 0, 1))
        except _C.StatusError as err:
            assert err.code == _C.StatusCode.INVALID_ARGUMENT and "keys must be non-empty" in err.message, err
            print("refused")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], **child_kwargs(tmp_path), capture_output=True, text=True,
                         timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "refused", (out.returncode, out.stderr[-2000:])


def test_latent_step_launcher_refuses_a_table_with_strided_columns():
    """The launcher's own check that the table's column stride is 1 (the kernel indexes table, exp_avg
    and exp_avg_sq rows as contiguous; the ops pass contiguous tables, so only a direct call reaches it)."""
    base = torch.randn(5, 6)
    table = base[:, ::2]  # strides (6, 2)
    before = base.clone()
    grad, idx = torch.randn(2, 3), torch.tensor([0, 3])
    args = (0, 1, table.data_ptr(), 0, 0, table.stride(), 5, 3, idx.data_ptr(), idx.stride(), grad.data_ptr(),
            grad.stride(), 2, 0.1, 0.001, 1e-8, -0.1, -0.1, False, CPU)  # fmt: skip
    err = _status_error(_C.latent_step, *args)
    assert err.code == _C.StatusCode.INVALID_ARGUMENT and "column stride must be 1" in err.message
    assert torch.equal(base, before)


def test_bindings_refuse_a_negative_dtype_code():
    """The bindings' as_dtype refuses codes below 0 as well as above int64's (the ops map dtypes through a dict, so
    only a direct call can pass one)."""
    with pytest.raises(ValueError, match="unknown dtype code -1"):
        _C.nn_argmin_cpu_workspace_bytes(4, 5, 3, -1, 1)
    with pytest.raises(ValueError, match="unknown dtype code 5"):
        _C.nn_argmin_cpu_workspace_bytes(4, 5, 3, 5, 1)


def test_latent_step_binding_refuses_a_negative_optimizer_code():
    """optimizer must be 0 (Adam) or 1 (SGD): -1 must not run as SGD."""
    table, grad, idx = torch.randn(5, 3), torch.randn(2, 3), torch.tensor([0, 3])
    before = table.clone()
    with pytest.raises(ValueError, match="optimizer must be 0"):
        _C.latent_step(
            0, -1, table.data_ptr(), 0, 0, table.stride(), 5, 3, idx.data_ptr(), idx.stride(),
            grad.data_ptr(), grad.stride(), 2, 0.1, 0.001, 1e-8, -0.1, -0.1, False, CPU,
        )  # fmt: skip
    assert torch.equal(table, before)


def test_set_cuda_kernels_replaces_an_unparsable_environment_choice(tmp_path):
    """set_cuda_kernels() replaces the environment's choice, its error included (kernel_variant.h:
    cuda_kernels_env_error is "empty when the variable was absent or understood"; after a set the variable
    no longer decides). Unreachable through `import glann_ext` (the bad variable fails the import), so the
    child loads the compiled module on its own."""
    so = glann_ext._ext._C.__file__
    script = textwrap.dedent(
        f"""
        import importlib.machinery, importlib.util
        loader = importlib.machinery.ExtensionFileLoader("glann_ext._C", {so!r})
        spec = importlib.util.spec_from_file_location("glann_ext._C", {so!r}, loader=loader)
        _C = importlib.util.module_from_spec(spec); loader.exec_module(_C)
        try:
            _C.cuda_kernels()
            raise SystemExit("no error for the bad variable")
        except ValueError:
            pass
        _C.set_cuda_kernels("legacy")
        print(_C.cuda_kernels())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                         **child_kwargs(tmp_path, GLANN_EXT_CUDA_KERNELS="hoper"))  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "legacy", (out.returncode, out.stderr[-2000:])
