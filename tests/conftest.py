"""Shared test configuration: the `cuda` marker skips cleanly without a GPU; the tiny datasets that the
trainer, pipeline, CLI and distributed tests share."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from glann_testing import blob_images

import glann_ext

# benchmarks/ is not installed: tests of its modules import it from the checkout's root, appended so that the
# installed glann_ext (earlier on sys.path) still wins over the source folder.
sys.path.append(str(Path(__file__).resolve().parents[1]))


def pytest_collection_modifyitems(config, items):
    if glann_ext.cuda_available():
        return
    reason = "needs CUDA: " + (
        "glann_ext was built without CUDA kernels"
        if not glann_ext.build_info()["cuda_compiled"]
        else "no CUDA device"
    )
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _no_deferred_cuda_error_left(request):
    """A CUDA test must collect the errors its kernels deferred (glann_ext.ops.raise_deferred_errors):
    one left pending would be raised by the next test's first glann_ext call and fail that test instead."""
    yield
    if "cuda" in request.keywords and glann_ext.cuda_available():
        try:
            glann_ext.ops.raise_deferred_errors(wait=True)
        except Exception as exc:  # noqa: BLE001 - any leftover error is this test's fault
            pytest.fail(f"the test left a deferred CUDA error behind: {type(exc).__name__}: {exc}")


@pytest.fixture(scope="session")
def blobs() -> torch.Tensor:
    """96 grey 28x28 blob images, float32 (96, 1, 28, 28) in [0, 1] (3 batches of the tiny preset)."""
    return torch.from_numpy(blob_images(96, 28)).float().div(255)[:, None]


@pytest.fixture(scope="session")
def blob_file(tmp_path_factory) -> str:
    """The same 96 images as a uint8 .npy dataset file."""
    path = tmp_path_factory.mktemp("data") / "blobs.npy"
    np.save(path, blob_images(96, 28))
    return str(path)
