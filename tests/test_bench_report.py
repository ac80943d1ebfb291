"""benchmarks/report.py: issue 16's CPU and issue 15's CUDA targets tables from pytest-benchmark documents
(synthetic figures), and a merge that survives a part cut off at its time limit."""

from __future__ import annotations

import json

from benchmarks.report import _method, _verdict, cpu_targets, main, merge, render, targets


def _bench(group: str, method: str, median: float, **extra: float) -> dict:
    return {
        "group": group,
        "name": f"bench_x[cpu-{method}]",
        "params": {"method": method},
        "stats": {"median": median, "min": median},
        "extra_info": extra,
    }


def test_cpu_targets_reads_ratios_and_both_peak_shares() -> None:
    g784 = "nn_argmin cpu N=2048 M=20480 D=784"
    g64 = "nn_argmin cpu N=4096 M=40960 D=64"
    lap = "laplacian_pyramid_loss fwd+bwd cpu 64x1x28x28"
    data = {
        "benchmarks": [
            _bench(g784, "glann_ext", 1.0, pct_fma_peak=80.9, pct_fma_peak_best=88.6, threads=2),
            _bench(g784, "glann_ext_1thread", 1.9, pct_fma_peak=89.0, pct_fma_peak_best=90.1, threads=1),
            _bench(g784, "faiss_IndexFlatL2", 1.05),
            _bench(g784, "torch_cdist_argmin", 2.0),
            _bench(g64, "glann_ext", 1.0, pct_fma_peak=90.0),
            _bench(g64, "faiss_IndexFlatL2", 1.5),
            _bench(lap, "glann_ext", 1.0, gbps=2.5),
            _bench(lap, "reference", 25.0),  # the slowest eager pyramid: not the one the target reads
            _bench(lap, "eager_slices", 19.0),
            _bench(lap, "eager_conv", 30.0),
        ]
    }
    rows = {
        line.split(" | ")[0] + " | " + line.split(" | ")[1]: line
        for line in cpu_targets(data).splitlines()[2:]
    }
    assert "1.05x | **missed by 1.05x**" in rows[f"| nn_argmin >= 1.1x faiss_IndexFlatL2 | {g784}"]
    assert "2.00x | met" in rows[f"| nn_argmin >= 1.1x torch_cdist_argmin | {g784}"]
    # the verdict reads the median; the best round is shown beside it
    two = rows[f"| nn_argmin >= 85% of the FMA peak (glann_ext, 2 threads) | {g784}"]
    assert "80.9% (best round 88.6%) | **missed" in two
    one = rows[f"| nn_argmin >= 85% of the FMA peak (glann_ext_1thread, 1 thread) | {g784}"]
    assert "89.0% (best round 90.1%) | met" in one
    assert "1.50x | met" in rows[f"| nn_argmin >= 1.3x faiss_IndexFlatL2 | {g64}"]
    assert not any("85%" in k and g64 in k for k in rows)  # the peak target is for D >= 256 only
    assert (
        "19.0x (2.5 GB/s) | **missed"
        in rows[f"| Laplacian fwd+bwd >= 20x the best torch eager pyramid (eager_slices) | {lap}"]
    )


def test_cuda_targets_read_the_legacy_and_the_hopper_rows() -> None:
    g = "nn_argmin cuda N=4096 M=40960 D=64"
    lap = "laplacian_pyramid_loss fwd+bwd cuda 64x3x64x64"
    proj = "project cuda (1e6 x 64 float32)"
    data = {
        "benchmarks": [
            _bench(g, "torch_cdist_argmin", 1.7),
            _bench(g, "glann_ext", 1.2),
            _bench(g, "glann_ext_bf16", 1.25),
            _bench(g, "glann_ext_hopper", 0.78),
            _bench(g, "glann_ext_hopper_bf16", 0.31),
            _bench(lap, "eager_conv", 3.5),
            _bench(lap, "glann_ext", 0.84),
            _bench(lap, "glann_ext_hopper_cuda_graph", 0.14),
            _bench(proj, "torch clone (memcpy bound)", 0.134),
            _bench(proj, "glann project_to_sphere", 0.571),
            _bench(proj, "glann project_to_sphere (hopper)", 0.319),
        ]
    }
    rows = {line.split(" | ")[0]: line for line in targets(data).splitlines()[2:] if line.startswith("|")}
    assert "1.42x | **missed by 1.41x**" in rows["| nn_argmin fp32 (legacy) >= 2x cdist().argmin()"]
    assert "2.18x | met" in rows["| nn_argmin fp32 (hopper) >= 2x cdist().argmin()"]
    assert "2.52x | **missed by 1.99x**" in rows["| nn_argmin bf16 (hopper) >= 5x the fp32 path"]
    assert "4.17x | **missed" in rows["| Laplacian glann_ext fwd+bwd >= 10x the best torch eager"]
    assert (
        "25.00x | met" in rows["| Laplacian glann_ext_hopper_cuda_graph fwd+bwd >= 10x the best torch eager"]
    )
    assert "23.47% | **missed" in rows["| projection (legacy) >= 70% of a copy's bandwidth"]
    assert "42.01% | **missed by 1.67x**" in rows["| projection (hopper) >= 70% of a copy's bandwidth"]


def test_main_skips_a_file_cut_off_at_its_limit(tmp_path, capsys) -> None:
    good, empty = tmp_path / "good.json", tmp_path / "empty.json"
    good.write_text(json.dumps({"benchmarks": [_bench("nn_argmin cpu N=1 M=2 D=64", "glann_ext", 1.0)]}))
    empty.write_text("")
    merged = tmp_path / "merged.json"
    assert main(["report", str(empty), str(good), "--merged", str(merged)]) == 0
    out = capsys.readouterr()
    assert f"skipped {empty}" in out.err
    assert len(json.loads(merged.read_text())["benchmarks"]) == 1
    assert main(["report", str(empty)]) == 1


def test_render_sorts_by_median_and_reports_each_ratio_against_the_first_glann_row() -> None:
    group = "nn_argmin cpu N=8 M=16 D=64"
    data = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11"},
        "datetime": "2026-01-01",
        "benchmarks": [  # run order: the like-for-like glann row first
            _bench(group, "glann_ext", 0.002, gflops=10.0, threads=2),
            _bench(group, "torch_cdist_argmin", 0.004, gflops=5.0, threads=2),
            _bench(group, "glann_ext_bf16", 0.001, gflops=20.0, threads=2),
        ],
    }
    lines = render(data).splitlines()
    assert lines[0] == "Machine: Test CPU, 2 logical CPUs; Python 3.11; run at 2026-01-01."
    start = lines.index(f"### {group}")
    # the threads field is not a column; the other extra_info fields are, in sorted order
    assert lines[start + 2] == "| method | median (ms) | glann_ext speed-up | gflops |"
    # fastest first; ratio = row median / the first glann row's median (0.002 s)
    assert lines[start + 4 : start + 7] == [
        "| glann_ext_bf16 | 1.000 | 0.50x | 20.0 |",
        "| glann_ext | 2.000 | 1.00x (ours) | 10.0 |",
        "| torch_cdist_argmin | 4.000 | 2.00x | 5.0 |",
    ]


def test_method_comes_from_the_parameters_else_from_the_last_part_of_the_test_id() -> None:
    assert _method({"name": "bench_x[cpu-4096x40960x64-torch_cdist_argmin]"}) == "torch_cdist_argmin"
    assert _method({"name": "bench_y[glann_ext]", "params": {}}) == "glann_ext"
    assert _method({"name": "bench_z[cpu-a-b]", "params": {"impl": "faiss"}}) == "faiss"
    assert _method({"name": "bench_plain"}) == "bench_plain"


def test_merge_keeps_every_documents_benchmarks_and_the_first_machine() -> None:
    a = {"machine_info": {"cpu": "A"}, "benchmarks": [_bench("g", "glann_ext", 1.0)]}
    b = {"machine_info": {"cpu": "B"}, "benchmarks": [_bench("g", "torch", 2.0), _bench("h", "x", 3.0)]}
    merged = merge([a, b])
    assert merged["machine_info"] == {"cpu": "A"}
    assert [x["params"]["method"] for x in merged["benchmarks"]] == ["glann_ext", "torch", "x"]
    assert merge([]) == {"benchmarks": []}


def test_cuda_laplacian_targets_read_the_best_eager_time_and_the_copy_bandwidth() -> None:
    small = "laplacian_pyramid_loss fwd+bwd cuda 64x3x64x64"
    big = "laplacian_pyramid_loss fwd+bwd cuda 16x3x256x256"
    proj = "project cuda (1e6 x 64 float32)"
    data = {
        "benchmarks": [
            _bench(small, "eager_slices", 5.0),
            _bench(small, "eager_conv", 3.5),  # the best eager time: the goal is against it
            _bench(small, "reference", 8.0),
            _bench(small, "glann_ext", 0.5),
            _bench(proj, "torch clone (memcpy bound)", 0.1, gbps=2000.0),
            _bench(big, "glann_ext", 1.0, gbps=700.0),
            _bench(big, "glann_ext_cuda_graph", 1.0, gbps=500.0),
        ]
    }
    text = targets(data)
    rows = {
        line.split(" | ")[0] + " | " + line.split(" | ")[1]: line
        for line in text.splitlines()[2:]
        if line.startswith("|")
    }
    assert (
        "7.00x | **missed by 1.43x**"
        in rows[f"| Laplacian glann_ext fwd+bwd >= 10x the best torch eager | {small}"]
    )
    # achieved GB/s over the copy's 2000 GB/s
    assert "35.00% | met" in rows[f"| Laplacian glann_ext >= 30% of the copy bandwidth | {big}"]
    assert (
        "25.00% | **missed by 1.20x**"
        in rows[f"| Laplacian glann_ext_cuda_graph >= 30% of the copy bandwidth | {big}"]
    )
    assert "Copy bandwidth (torch clone, read + write): 2000 GB/s." in text


def test_a_value_equal_to_its_goal_meets_it() -> None:
    assert _verdict(1.3, 1.3) == "met (1.30 >= 1.3)"
    assert _verdict(1.0, 1.3) == "**missed by 1.30x**"
    g64 = "nn_argmin cpu N=4096 M=40960 D=64"
    data = {"benchmarks": [_bench(g64, "glann_ext", 1.0), _bench(g64, "faiss_IndexFlatL2", 1.3)]}
    assert "| 1.30x | met (1.30 >= 1.3) |" in cpu_targets(data)
