"""Shared test configuration: the `cuda` marker skips cleanly without a GPU."""

from __future__ import annotations

import pytest
import torch

import glann_ext


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
