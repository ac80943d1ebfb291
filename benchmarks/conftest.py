"""pytest hooks of the benchmarks: say which glann_ext is measured, and record the GPU in the JSON."""

from __future__ import annotations

import pytest
import torch

import glann_ext


def pytest_report_header(config) -> list[str]:
    # The module that is measured: the installed package, unless the source tree was built in place.
    return [f"glann_ext: {glann_ext.__file__} {glann_ext.build_info()}"]


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info: dict) -> None:
    machine_info["glann_ext"] = {"file": glann_ext.__file__, **glann_ext.build_info()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        machine_info["gpu"] = {
            "name": p.name,
            "capability": f"{p.major}.{p.minor}",
            "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1),
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
        }
