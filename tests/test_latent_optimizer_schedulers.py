"""The latent optimizers as torch.optim.Optimizer: schedulers drive their rate (and Adam's beta1), a rate of 0
set after construction steps, a negative or NaN one is refused at the step, and the state schema that run
checkpoints hold is unchanged."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler
from torch.optim.optimizer import register_optimizer_step_post_hook

from glann_ext import fused_latent_adam_, project_to_sphere
from glann_ext.ops import reference
from glann_ext.optim import SphereSparseAdam, SphereSparseSGD

BACKENDS = ["fused", "reference"]
KINDS = {"adam": SphereSparseAdam, "sgd": SphereSparseSGD}


def unit_table(n: int = 30, d: int = 6, seed: int = 0) -> torch.Tensor:
    t = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return t / t.norm(dim=1, keepdim=True)


def batches(k: int, n: int = 30, d: int = 6, seed: int = 1):
    """k (indices, grad) pairs, with repeated indices."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, n, (8,), generator=g), torch.randn(8, d, dtype=torch.float64, generator=g)) for _ in range(k)]  # fmt: skip


def test_latent_optimizers_are_torch_optimizers_over_their_table():
    """One param group over the table itself (lr etc. there, the attributes backed by it); zero_grad, repr and
    deepcopy work (a copy steps on its own, also after a scheduler wrapped the original's step); a second
    group and a table computed by autograd are refused."""
    for cls in (SphereSparseAdam, SphereSparseSGD):
        table = unit_table()
        opt = cls(table, lr=0.01, backend="reference")
        assert isinstance(opt, torch.optim.Optimizer)
        assert len(opt.param_groups) == 1 and opt.param_groups[0]["params"][0] is table
        assert opt.param_groups[0]["lr"] == opt.lr == 0.01 and opt.param_groups[0]["project"] is opt.project
        opt.lr = 0.25
        assert opt.param_groups[0]["lr"] == 0.25
        before = table.clone()
        opt.zero_grad()
        opt.zero_grad(set_to_none=False)
        assert torch.equal(table, before) and table.grad is None
        assert repr(opt).startswith(f"{cls.__name__} (\nParameter Group 0\n") and "    lr: 0.25\n" in repr(
            opt
        )
        with pytest.raises(
            ValueError, match=rf"^{cls.__name__}.add_param_group: the optimizer updates its one"
        ):
            opt.add_param_group({"params": [torch.zeros(3, 6, dtype=torch.float64)]})
        lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # wraps opt.step on the instance
        twin = copy.deepcopy(opt)
        assert twin.param_groups[0]["params"][0] is twin.table and twin.table is not table
        idx, grad = batches(1)[0]
        twin.step(idx, grad)
        assert torch.equal(table, before)  # the copy's step did not reach the original
        opt.step(idx, grad)
        assert torch.equal(table, twin.table)
        if cls is SphereSparseAdam:
            assert torch.equal(opt.exp_avg_sq, twin.exp_avg_sq) and opt.step_count == twin.step_count == 1
    leaf = torch.randn(4, 3, requires_grad=True)
    with pytest.raises(
        ValueError, match=r"^SphereSparseSGD: table must be a leaf tensor .* \(MulBackward0\)"
    ):
        SphereSparseSGD(leaf * 2)


def _same_state(a: dict, b: dict) -> bool:
    """Equal but for lr, tensors compared bit for bit."""
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a if k != "lr"
    )


def _run(opt, steps, rates=None, sched=None) -> list[float]:
    """Steps opt on ``steps``; before each, lr set by hand to ``rates[i]``, or stepped by ``sched``."""
    used = []
    for i, (idx, grad) in enumerate(steps):
        if rates is not None:
            opt.lr = rates[i]
        used.append(opt.param_groups[0]["lr"])
        opt.step(idx, grad)
        if sched is not None:
            sched.step()
    return used


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adam", "sgd"])
@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_schedulers_drive_the_rate_of_each_step(backend, kind, schedule):
    """k scheduled steps give bit for bit the table of k steps at the schedule's rates set by hand; the cosine
    schedule's last step is at lr 0 (eta_min)."""
    steps = batches(6)
    scheduled = KINDS[kind](unit_table(), lr=0.2, backend=backend)
    if schedule == "cosine":
        sched = lr_scheduler.CosineAnnealingLR(scheduled, T_max=5, eta_min=0.0)
        want = [0.1 * (1 + math.cos(math.pi * i / 5)) for i in range(6)]
    else:
        sched = lr_scheduler.StepLR(scheduled, step_size=2, gamma=0.5)
        want = [0.2 * 0.5 ** (i // 2) for i in range(6)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. the scheduler's "lr_scheduler.step() before optimizer.step()"
        used = _run(scheduled, steps, sched=sched)
    assert used == pytest.approx(want, rel=1e-14, abs=1e-17) and (used[-1] == 0.0) == (schedule == "cosine")
    by_hand = KINDS[kind](unit_table(), lr=0.2, backend=backend)
    _run(by_hand, steps, rates=used)
    constant = KINDS[kind](unit_table(), lr=0.2, backend=backend)
    _run(constant, steps)
    assert torch.equal(scheduled.table, by_hand.table) and not torch.equal(scheduled.table, constant.table)
    if kind == "adam":
        assert torch.equal(scheduled.exp_avg_sq, by_hand.exp_avg_sq) and scheduled.step_count == 6


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_cycle_drives_adams_rate_and_beta1(backend):
    """OneCycleLR cycles beta1 too (it finds "betas" in the defaults); every step uses the group's betas."""
    steps = batches(5)
    scheduled = SphereSparseAdam(unit_table(), lr=0.1, backend=backend)
    sched = lr_scheduler.OneCycleLR(scheduled, max_lr=0.3, total_steps=5)
    by_hand = SphereSparseAdam(unit_table(), lr=0.1, backend=backend)
    seen = set()
    for idx, grad in steps:
        by_hand.lr, by_hand.betas = scheduled.lr, scheduled.betas
        seen.add(scheduled.betas[0])
        scheduled.step(idx, grad)
        by_hand.step(idx, grad)
        sched.step()
    assert len(seen) > 2 and torch.equal(scheduled.table, by_hand.table)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_zero_rate_set_on_the_group_steps(backend):
    """lr 0 (the end of a cosine schedule): Adam's moments and counter advance as torch.optim.SparseAdam's at
    lr 0 do, bit for bit, and the table is unchanged (without projection) or only re-projected (with it)."""
    steps = batches(3)
    param = torch.nn.Parameter(unit_table())
    torch_adam = torch.optim.SparseAdam([param], lr=0.1)
    torch_adam.param_groups[0]["lr"] = 0.0  # as a scheduler sets it (SparseAdam's constructor asks for > 0)
    ours = SphereSparseAdam(unit_table(), lr=0.1, project=False, backend=backend)
    ours.param_groups[0]["lr"] = 0.0
    sgd = SphereSparseSGD(unit_table(), lr=0.1, project=False, backend=backend)
    sgd.param_groups[0]["lr"] = 0.0
    for idx, grad in steps:
        param.grad = torch.sparse_coo_tensor(idx[None], grad, param.shape, check_invariants=True)
        torch_adam.step()
        ours.step(idx, grad)
        sgd.step(idx, grad)
    state = torch_adam.state[param]
    assert torch.equal(ours.exp_avg, state["exp_avg"]) and torch.equal(ours.exp_avg_sq, state["exp_avg_sq"])
    assert ours.step_count == int(state["step"]) == 3 and ours.exp_avg.abs().sum() > 0
    assert torch.equal(ours.table, unit_table()) and torch.equal(param.detach(), unit_table())
    assert torch.equal(sgd.table, unit_table())
    for cls in (SphereSparseAdam, SphereSparseSGD):
        long = unit_table() * 3  # rows of norm 3: the touched ones are re-projected, the others kept
        opt = cls(long, lr=0.1, backend=backend)
        opt.lr = 0
        idx, grad = steps[0]
        opt.step(idx, grad)
        touched = torch.zeros(30, dtype=torch.bool)
        touched[idx] = True
        torch.testing.assert_close(long[touched], project_to_sphere(unit_table()[touched] * 3))
        assert torch.equal(long[~touched], unit_table()[~touched] * 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_negative_or_nan_rate_set_on_the_group_is_refused_at_the_step(backend, kind):
    """Nothing written (table, moments, counter); other numbers are taken as the floats they are."""
    opt = KINDS[kind](unit_table(), lr=0.1, backend=backend)
    name = type(opt).__name__
    idx, grad = batches(1)[0]
    before = copy.deepcopy(opt.state_dict())
    cases = [(-0.1, ValueError, "-0.1"), (math.nan, ValueError, "nan"), (-math.inf, ValueError, "-inf"),
             (math.inf, ValueError, "inf"), (np.float64(-1e-30), ValueError, r"np.float64\(-1e-30\)"),
             ("0.1", TypeError, "str '0.1'"), (True, TypeError, "bool True"),
             (torch.tensor(-0.1), ValueError, "-0.1"), (torch.tensor([1, 2.0]), TypeError, "Tensor")]  # fmt: skip
    for lr, exc, got in cases:
        opt.param_groups[0]["lr"] = lr
        must = "must be a finite float >= 0" if exc is ValueError else "must be a float"
        with pytest.raises(exc, match=rf"^{name}.step: lr \(param_groups\[0\]\['lr'\]\) {must}, got {got}"):
            opt.step(idx, grad)
        assert torch.equal(opt.table, unit_table())
        assert _same_state(opt.state_dict(), before)
    for bad in (-1.0, math.nan, "x"):  # opt.lr = ... is checked at once (a state with it could not load)
        with pytest.raises((ValueError, TypeError), match=rf"^{name}.lr: lr must be a"):
            opt.lr = bad
    same = KINDS[kind](unit_table(), lr=0.5, backend=backend)
    for lr in (
        np.float32(0.5),
        torch.tensor(0.5),
    ):  # what a LambdaLR of numpy factors sets; torch's tensor lr
        opt.lr = lr
        opt.step(idx, grad)
        same.step(idx, grad)
        assert torch.equal(opt.table, same.table)


def test_state_dict_schema_is_unchanged_and_an_old_state_loads():
    """The keys and values of glann_ext's schema (not Optimizer's {state, param_groups}), also with a
    scheduler's initial_lr in the group; a state written by hand as the plain classes saved it loads, with
    lr 0 too (saved at the end of a cosine schedule), and a negative or NaN lr is refused there."""
    table = unit_table()
    adam = SphereSparseAdam(table, lr=0.03, betas=(0.5, 0.9), eps=1e-7, project=False)
    lr_scheduler.CosineAnnealingLR(adam, T_max=4)
    idx, grad = batches(1)[0]
    adam.step(idx, grad)
    state = adam.state_dict()
    assert list(state) == ["kind", "step", "lr", "betas", "eps", "project", "exp_avg", "exp_avg_sq"]
    assert [state[k] for k in list(state)[:6]] == ["adam", 1, 0.03, [0.5, 0.9], 1e-7, False]
    assert state["exp_avg"] is adam.exp_avg and state["exp_avg_sq"] is adam.exp_avg_sq
    sgd = SphereSparseSGD(table.clone(), lr=0.3, project=False)
    lr_scheduler.StepLR(sgd, step_size=3)
    assert sgd.state_dict() == {"kind": "sgd", "lr": 0.3, "project": False}

    m, v = torch.randn(30, 6, dtype=torch.float64), torch.rand(30, 6, dtype=torch.float64)
    old = {"kind": "adam", "step": 7, "lr": 0.0, "betas": [0.6, 0.95], "eps": 1e-6, "project": True,
           "exp_avg": m, "exp_avg_sq": v}  # fmt: skip
    adam.load_state_dict(old)
    assert (adam.step_count, adam.lr, adam.betas, adam.eps, adam.project) == (7, 0.0, (0.6, 0.95), 1e-6, True)
    assert adam.param_groups[0]["initial_lr"] == 0.03  # the scheduler's, kept
    assert torch.equal(adam.exp_avg, m) and adam.exp_avg is not m
    assert {k: adam.state_dict()[k] for k in old if k not in ("exp_avg", "exp_avg_sq")} == {
        k: old[k] for k in old if k not in ("exp_avg", "exp_avg_sq")
    }
    adam.step(idx, grad)  # at lr 0
    sgd.load_state_dict({"kind": "sgd", "lr": 0.0, "project": True})
    assert sgd.state_dict() == {"kind": "sgd", "lr": 0.0, "project": True}
    for opt, saved in ((adam, {**old, "step": 2}), (sgd, {"kind": "sgd", "project": False})):
        name = type(opt).__name__
        for lr, got in ((-0.5, "-0.5"), (math.nan, "nan")):
            with pytest.raises(
                ValueError, match=rf"^{name}.load_state_dict: lr must be a finite float >= 0, got {got}$"
            ):
                opt.load_state_dict({**saved, "lr": lr})
            assert opt.lr == 0.0 and opt.project is True  # unchanged
    # glann_ext 0.1's reference backend saved torch's SparseAdam, maybe with a scheduler's initial_lr
    param = torch.nn.Parameter(unit_table())
    sparse = torch.optim.SparseAdam([param], lr=0.04)
    lr_scheduler.StepLR(sparse, step_size=2)
    adam.load_state_dict(sparse.state_dict())
    assert (adam.step_count, adam.lr, adam.project) == (0, 0.04, True) and not adam.exp_avg.any()


def test_step_hooks_and_the_profiler_see_each_step():
    """Optimizer's step pre/post hooks (the instance's and the global ones) run with the step's arguments, and
    a profiled step is recorded under Optimizer's name; the step computes the same either way."""
    idx, grad = batches(1)[0]
    plain = SphereSparseAdam(unit_table(), lr=0.1)
    plain.step(idx, grad, updates=2)
    hooked = SphereSparseAdam(unit_table(), lr=0.1)
    calls = []
    # torch passes the step's positional arguments with the optimizer first
    pre = hooked.register_step_pre_hook(
        lambda o, a, k: calls.append(("pre", o, a[1] is idx and a[2] is grad, k))
    )
    post = register_optimizer_step_post_hook(lambda o, a, k: calls.append(("post", o)))
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            hooked.step(idx, grad, updates=2)
    finally:
        pre.remove()
        post.remove()
    assert calls == [("pre", hooked, True, {"updates": 2}), ("post", hooked)]
    assert "Optimizer.step#SphereSparseAdam.step" in {e.key for e in prof.key_averages()}
    assert torch.equal(hooked.table, plain.table) and torch.equal(hooked.exp_avg, plain.exp_avg)
    hooked.step(idx, grad)  # hooks removed: no more calls
    assert len(calls) == 2


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("kind", [SphereSparseAdam, SphereSparseSGD])
def test_step_reads_a_sparse_table_grad_as_torch_optimizers_do(backend, kind):
    """``step()``, ``step(closure)`` and ``step(sparse_grad)`` on an ``nn.Embedding(sparse=True)`` table give
    the step of its explicit rows; int32 indices equal int64 ones. Before, each failed with Python's "missing positional argument" or an int64 error."""
    g = torch.Generator().manual_seed(3)
    start = project_to_sphere(torch.randn(12, 5, generator=g))
    batches = [torch.tensor([0, 3, 3, 7]), torch.tensor([1, 3, 11])]
    targets = [torch.randn(len(b), 5, generator=g) for b in batches]

    def run(how: str) -> torch.Tensor:
        emb = torch.nn.Embedding(12, 5, sparse=True)
        with torch.no_grad():
            emb.weight.copy_(start)
        opt = kind(emb.weight, lr=0.1, backend=backend)
        for batch, target in zip(batches, targets):
            opt.zero_grad()

            def closure(batch=batch, target=target):
                loss = (emb(batch) - target).pow(2).sum()
                loss.backward()
                return loss

            if how == "closure":
                assert float(opt.step(closure).detach()) > 0
                continue
            if how == "closure=":  # by keyword, as Lightning and torch's docs call it
                assert float(opt.step(closure=closure).detach()) > 0
                continue
            closure()
            grad = emb.weight.grad.coalesce()
            if how == "grad":
                assert opt.step() is None
            elif how == "sparse":
                opt.step(emb.weight.grad)
            else:  # explicit rows, int64 or int32
                idx = grad.indices()[0]
                opt.step(idx.int() if how == "int32" else idx, grad.values())
        return emb.weight.detach().clone()

    want = run("rows")
    assert not torch.equal(want, start)
    for how in ("grad", "closure", "closure=", "sparse", "int32"):
        assert torch.equal(run(how), want), how


@pytest.mark.parametrize("kind", [SphereSparseAdam, SphereSparseSGD])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8])
def test_step_names_itself_and_both_index_dtypes_it_takes(kind, dtype):
    """Indices of another dtype are refused by the step the caller made, naming int32 too (it takes both);
    the error named the fused op underneath and int64 only."""
    table = torch.nn.Parameter(project_to_sphere(torch.randn(6, 3)))
    before = table.detach().clone()
    with pytest.raises(
        TypeError,
        match=rf"^{kind.__name__}.step: indices must have dtype int64 or int32, got {str(dtype)[6:]}$",
    ):
        kind(table, lr=0.1).step(torch.tensor([0, 1]).to(dtype), torch.randn(2, 3))
    assert torch.equal(table.detach(), before)


def test_step_without_rows_names_what_it_takes():
    table = torch.nn.Parameter(project_to_sphere(torch.randn(6, 3)))
    opt = SphereSparseAdam(table, lr=0.1)
    with pytest.raises(TypeError, match=r"step\(indices, grad_rows\).*table.grad is None"):
        opt.step()
    table.grad = torch.ones(6, 3)  # dense: which rows moved is unknown
    with pytest.raises(
        ValueError, match=r"got a gradient of layout strided: use nn.Embedding\(\.\.\., sparse=True\)"
    ):
        opt.step()
    with pytest.raises(ValueError, match=r"layout sparse_coo with 2 sparse dimension"):
        opt.step(torch.ones(6, 3).to_sparse())
    # rows without their grad name the grad, as before the protocol (not "a gradient of layout strided")
    with pytest.raises(TypeError, match=r"grad must be a torch.Tensor, got NoneType"):
        opt.step(torch.tensor([1, 2]))
    with pytest.raises(TypeError, match=r"takes rows \(indices, grad\) or a closure, not both"):
        opt.step(torch.tensor([1]), torch.ones(1, 3), closure=lambda: None)
    # a sparse gradient passed as the rows' grad: both backends say how to pass it
    sparse = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), torch.ones(2, 3), (6, 3), check_invariants=True)
    for backend in ("fused", "reference"):
        other = SphereSparseAdam(table, lr=0.1, backend=backend)
        with pytest.raises(
            TypeError, match=r"grad must be dense gradient rows .* \.indices\(\)\[0\] and \.values\(\)"
        ):
            other.step(torch.tensor([1, 4]), sparse)
    assert opt.step_count == 0 and not opt.exp_avg.any()


def test_the_documented_ways_to_resume_a_schedule_give_the_same_rates():
    """glann_ext.optim's docstring: the scheduler's own state, or ``initial_lr`` set and ``last_epoch`` one
    less than the steps taken, continue the uninterrupted schedule's rates."""
    table = project_to_sphere(torch.randn(10, 4))
    opt = SphereSparseAdam(table, lr=0.1)
    sched = lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    for _ in range(7):
        opt.step(torch.tensor([1]), torch.ones(1, 4))
        sched.step()
    saved = {"opt": opt.state_dict(), "sched": sched.state_dict()}
    by_state, by_epoch = SphereSparseAdam(table.clone(), lr=0.1), SphereSparseAdam(table.clone(), lr=0.1)
    by_state.load_state_dict(saved["opt"])
    resumed = lr_scheduler.CosineAnnealingLR(by_state, T_max=20)
    resumed.load_state_dict(saved["sched"])
    by_epoch.load_state_dict(saved["opt"])
    by_epoch.param_groups[0]["initial_lr"] = 0.1
    made = lr_scheduler.CosineAnnealingLR(by_epoch, T_max=20, last_epoch=7 - 1)
    for _ in range(5):
        for o in (opt, by_state, by_epoch):
            o.step(torch.tensor([1]), torch.ones(1, 4))
        for s in (sched, resumed, made):
            s.step()
        assert opt.lr == by_state.lr == pytest.approx(by_epoch.lr, rel=1e-12)
    assert torch.equal(by_state.table, opt.table)


# Mutation test (2026-12-07): SphereSparseAdam.step ignored ``updates`` (bias correction from the global
# counter)
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_adam_updates_sets_the_bias_correction_step(backend):
    g = torch.Generator().manual_seed(3)
    opt = SphereSparseAdam(unit_table(6, 4), lr=0.1, backend=backend)
    for _ in range(3):  # the counter runs ahead: rows 2 and 3 were never touched
        opt.step(torch.tensor([0, 1]), torch.randn(2, 4, generator=g, dtype=torch.float64))
    grad = torch.randn(2, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([2, 3])
    first = opt.table.clone(), opt.exp_avg.clone(), opt.exp_avg_sq.clone()
    fused_latent_adam_(*first, idx, grad, step=1, lr=0.1)  # their first update: step 1
    opt.step(idx, grad, updates=1)
    torch.testing.assert_close(opt.table, first[0], rtol=1e-12, atol=1e-12)
    assert opt.step_count == 4


# Mutation test (2026-12-07): the reference Adam step projected its rows with project=False
def test_reference_adam_step_without_projection_is_torch_sparse_adam():
    g = torch.Generator().manual_seed(4)
    table = unit_table(5, 3) * 2.0  # rows of norm 2: a projection would show
    idx, grad = torch.tensor([0, 3]), torch.randn(2, 3, generator=g, dtype=torch.float64)
    param = torch.nn.Parameter(table.clone())
    torch_adam = torch.optim.SparseAdam([param], lr=0.1)
    param.grad = torch.sparse_coo_tensor(idx[None], grad, param.shape, check_invariants=True)
    torch_adam.step()
    ours = table.clone()
    m, v = torch.zeros_like(ours), torch.zeros_like(ours)
    reference.fused_latent_adam_reference(ours, m, v, idx, grad, step=1, lr=0.1, project=False)
    assert torch.equal(ours, param.detach())
    opt = SphereSparseAdam(table.clone(), lr=0.1, project=False, backend="reference")
    opt.step(idx, grad)
    assert torch.equal(opt.table, param.detach())
    assert not torch.allclose(opt.table[idx].norm(dim=1), torch.ones(2, dtype=torch.float64))


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.
# rows and a closure are refused together: refused only when grad was given too, indices (or a sparse
# gradient) with closure= would run the closure and then step the rows given
@pytest.mark.parametrize("kind", [SphereSparseAdam, SphereSparseSGD])
def test_step_refuses_rows_or_a_sparse_grad_together_with_a_closure(kind):
    emb = torch.nn.Embedding(8, 3, sparse=True)
    with torch.no_grad():
        emb.weight.copy_(project_to_sphere(torch.randn(8, 3, generator=torch.Generator().manual_seed(0))))
    opt = kind(emb.weight, lr=0.1)
    calls = []

    def closure():
        calls.append(1)
        loss = emb(torch.tensor([1, 4])).sum()
        loss.backward()
        return loss

    closure()
    sparse, before = emb.weight.grad.clone(), emb.weight.detach().clone()
    for rows in (torch.tensor([1, 4]), sparse):
        with pytest.raises(TypeError, match=r"takes rows \(indices, grad\) or a closure, not both"):
            opt.step(rows, closure=closure)
    assert calls == [1] and torch.equal(emb.weight.detach(), before)


# an integer tensor is not a rate (only one-element *float* tensors are taken, as the docstring of
# _check_rate says; a wrong type is a TypeError)
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_an_integer_tensor_is_not_a_rate(kind):
    cls = KINDS[kind]
    with pytest.raises(TypeError, match=rf"^{cls.__name__}: lr must be a float, got Tensor tensor\(1\)"):
        cls(unit_table(4, 3), lr=torch.tensor(1))
    opt = cls(unit_table(4, 3), lr=0.1)
    with pytest.raises(TypeError, match=rf"^{cls.__name__}.lr: lr must be a float, got Tensor tensor\(1\)"):
        opt.lr = torch.tensor(1)
    assert opt.lr == 0.1
    opt.param_groups[0]["lr"] = torch.tensor(1)  # as a scheduler would write it: refused at the step
    with pytest.raises(TypeError, match=r"lr \(param_groups\[0\]\['lr'\]\) must be a float, got Tensor"):
        opt.step(torch.tensor([1]), torch.ones(1, 3, dtype=torch.float64))


# each step reads ``project`` from the group: read from the constructor's defaults,
# ``opt.project = False`` (or a scheduler/loaded state setting the group) would be ignored
@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_project_set_after_construction_is_what_the_step_uses(backend, kind):
    table = unit_table(5, 3) * 2.0  # rows of norm 2: a projection would show
    g = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    idx = torch.tensor([0, 3])
    opt = KINDS[kind](table.clone(), lr=0.1, project=True, backend=backend)
    opt.project = False
    assert opt.param_groups[0]["project"] is False
    opt.step(idx, g)
    want = table.clone()
    if kind == "sgd":
        reference.fused_latent_sgd_reference(want, idx, g, lr=0.1, project=False)
    else:
        m, v = torch.zeros_like(want), torch.zeros_like(want)
        reference.fused_latent_adam_reference(want, m, v, idx, g, step=1, lr=0.1, project=False)
    torch.testing.assert_close(opt.table, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(opt.table[idx].norm(dim=1), torch.ones(2, dtype=torch.float64))
    # and the other way round: a table made without projection, switched on
    opt = KINDS[kind](table.clone(), lr=0.1, project=False, backend=backend)
    opt.project = True
    opt.step(idx, g)
    torch.testing.assert_close(opt.table[idx].norm(dim=1), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_loaded_state_must_say_project_with_a_bool(kind):
    """load_state_dict read ``project`` by its truth value, so a saved "no" loaded with projection on; it is
    refused as the constructor refuses it, before anything of the optimizer changes."""
    opt = KINDS[kind](unit_table(4, 3), lr=0.1, project=False)
    with pytest.raises(TypeError, match=r"load_state_dict: project must be a bool, got str 'no'"):
        opt.load_state_dict({**opt.state_dict(), "project": "no", "lr": 0.5})
    assert opt.project is False and opt.lr == 0.1


def test_adams_eps_takes_a_numpy_scalar_as_lr_and_betas_do():
    opt = SphereSparseAdam(
        unit_table(4, 3), lr=np.float32(0.01), betas=(np.float64(0.9), 0.99), eps=np.float32(1e-6)
    )
    assert opt.eps == pytest.approx(1e-6) and type(opt.eps) is float
    for bad in (np.float32("nan"), np.float64(0.0), True):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            SphereSparseAdam(unit_table(4, 3), eps=bad)
