"""The legacy/Hopper switch of the CUDA kernels (csrc/common/kernel_variant.h, glann_ext.ops.kernels): its
spellings, its errors, the environment variable, and build_info. Runs on the CPU: the switch exists in every
build (without CUDA, or on a device older than compute capability 9.0, it changes nothing)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from glann_testing import child_kwargs

import glann_ext
from glann_ext.ops.kernels import DEFAULT, cuda_kernels, set_cuda_kernels, use_cuda_kernels


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("legacy", "legacy"),
        ("hopper", "hopper"),
        ("hopper:laplacian", "hopper:laplacian"),
        ("hopper:project,nn_argmin", "hopper:nn_argmin,project"),
        ("hopper:laplacian,project,nn_argmin", "hopper"),
        ("hopper:project,project", "hopper:project"),
    ],
)
def test_spellings_are_canonical(spec, canonical):
    before = cuda_kernels()  # DEFAULT, unless GLANN_EXT_CUDA_KERNELS chose for this process
    with use_cuda_kernels(spec):
        assert cuda_kernels() == canonical
        compiled = glann_ext.build_info()["cuda_compiled"]
        assert glann_ext.build_info()["cuda_kernels"] == (canonical if compiled else None)
    assert cuda_kernels() == before


@pytest.mark.parametrize(
    "spec", ["", "Hopper", "hopper:", "hopper:nn_argmin,", "hopper:foo", "legacy,hopper", "new"]
)
def test_unknown_spellings_raise_and_change_nothing(spec):
    previous = cuda_kernels()
    set_cuda_kernels("hopper:laplacian")
    try:
        with pytest.raises(ValueError, match="legacy, hopper or hopper:OP"):
            set_cuda_kernels(spec)
        assert cuda_kernels() == "hopper:laplacian"
    finally:
        set_cuda_kernels(previous)
    with pytest.raises(TypeError):
        set_cuda_kernels(1)  # type: ignore[arg-type]


def test_use_cuda_kernels_restores_after_an_error():
    before = cuda_kernels()
    with pytest.raises(RuntimeError), use_cuda_kernels("hopper"):
        raise RuntimeError("inside")
    assert cuda_kernels() == before


def _child(tmp_path, value: str) -> subprocess.CompletedProcess:
    """A fresh process's switch (its stdout). The switch exists in every build; ``build_info`` reports it only
    where CUDA kernels were compiled (None otherwise), so a CPU-only build, a user's default without nvcc,
    passes these tests too."""
    code = (
        "import glann_ext; from glann_ext.ops.kernels import cuda_kernels; info = glann_ext.build_info(); "
        "assert info['cuda_kernels'] == (cuda_kernels() if info['cuda_compiled'] else None), info; "
        "print(cuda_kernels())"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        **child_kwargs(tmp_path, GLANN_EXT_CUDA_KERNELS=value),
    )


def test_environment_variable_chooses_and_a_typo_fails_the_import(tmp_path):
    ok = _child(tmp_path, "hopper:project,laplacian")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "hopper:laplacian,project"
    bad = _child(tmp_path, "hoper")
    assert bad.returncode != 0
    assert "ValueError: GLANN_EXT_CUDA_KERNELS='hoper'" in bad.stderr


def test_default_without_the_variable_is_the_hopper_search_and_projection(tmp_path):
    """A process without the variable runs the default (kDefaultHopperOps, which DEFAULT reads); an empty
    variable is no choice, and ``legacy`` is the way back."""
    for value, expected in (("", DEFAULT), ("legacy", "legacy")):
        child = _child(tmp_path, value)
        assert child.returncode == 0, child.stderr
        assert child.stdout.strip() == expected
    assert DEFAULT == "hopper:nn_argmin,project"


# Mutation test (2026-12-07): use_cuda_kernels restored the default choice, not the one it found
def test_use_cuda_kernels_restores_the_previous_choice_not_the_default():
    before = cuda_kernels()
    other = "legacy" if DEFAULT != "legacy" else "hopper"
    try:
        set_cuda_kernels(other)
        with use_cuda_kernels("hopper:laplacian"):
            assert cuda_kernels() == "hopper:laplacian"
        assert cuda_kernels() == other
    finally:
        set_cuda_kernels(before)


# Mutation test (2026-12-07): set_cuda_kernels passed a non-str to the binding (pybind11's "incompatible
# function arguments")
def test_set_cuda_kernels_names_the_type_it_wants():
    with pytest.raises(TypeError, match=r"^spec must be a str, got int$"):
        set_cuda_kernels(1)
