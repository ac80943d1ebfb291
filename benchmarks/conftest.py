"""pytest hooks of the benchmarks: say which glann_ext is measured, and record the GPU in the JSON.

Every timed row checks its own output before it is timed: on the row's inputs, against a named baseline
computed in the same run (float64 search, float64 reference loss and gradient, float64 reference step and
projection; each bench file's docstring says what and at what tolerance), for every device and dtype row. A
row whose output is wrong fails and records no time.

Quick mode: pytest-benchmark's ``--benchmark-disable`` runs every row once as a plain test, its check
included, and records nothing (no rounds, no extra_info: ``benchmark.stats`` is None then, and the rows
return before reading it), e.g. ``pytest benchmarks/bench_nn_argmin.py --benchmark-disable -k cpu``, or
``-k cuda`` on a GPU; tests/test_bench_files.py runs one small CPU row of each file so, in CI.
"""

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
