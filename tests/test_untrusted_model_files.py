"""A model file is untrusted: forged descriptions, configs and tensors give one-line CheckpointErrors at load
time (naming the field and the value), never hangs, huge allocations or tracebacks at sample time."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from glann_testing import child_kwargs, swap_in_after_the_check, tensors_equal, tiny_glann
from safetensors.torch import save

from glann_ext.errors import CheckpointError, UsageError
from glann_ext.models import GLANN, MLP, DCGANGenerator, balance, load_model_file, read_model_file, save_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        G = DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=8)
        T = MLP(4, 8, hidden=16, layers=2)
        codes = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save_model(GLANN(G, codes, T, config={"seed": 0, "balance_draws": 2.0}), path)
    return path


def _forged(src, dst, *, meta=None, tensors=None, raw_meta=None):
    t, m = read_model_file(src)
    if meta:
        meta(m)
    if tensors:
        tensors(t)
    dst.write_bytes(save(t, metadata={"glann_ext": raw_meta if raw_meta is not None else json.dumps(m)}))
    return dst


def _set(key, field, value):
    return lambda m: m[key].__setitem__(field, value)


@pytest.mark.parametrize(("key", "field"), [("mapping", "layers"), ("generator", "depth")])
def test_a_huge_layer_count_is_refused_before_anything_is_built(
    model_file, tmp_path, monkeypatch, key, field
):
    """built_to_fit built 10^7 modules on the meta device first: hours and ~100 GB before its size check. The
    count is refused before building; the modules built are counted (not timed), and a regression fails at
    the 10,000th instead of running for hours."""
    p = _forged(model_file, tmp_path / "f.safetensors", meta=_set(key, field, 10**7))
    built, module_init = [], torch.nn.Module.__init__

    def counted(self, *args, **kwargs):
        built.append(1)
        if len(built) > 10_000:
            raise AssertionError("10,000 modules built for a forged layer count")
        module_init(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", counted)
    with pytest.raises(CheckpointError, match=f"{field} = 10000000: more layers than the file's"):
        load_model_file(p)
    assert len(built) < 100


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sample_noise_scale", -3.0),
        ("sample_noise_scale", 1e30),
        ("sample_noise_scale", "abc"),
        ("balance_draws", 1e12),
        ("balance_draws", "abc"),
        ("balance_quantile", 7.0),
        ("seed", "x"),
        ("seed", 1.5),
        ("seed", -(2**70)),  # below int64 (found by mutation testing: only the upper end was checked)
        ("sample_spread", 99.0),
        ("sample_local_spread", -0.5),
        ("sample_local_neighbours", 10**9),
        ("sample_local_neighbours", 1.5),
    ],
)
def test_sampling_config_values_are_checked_at_load(model_file, tmp_path, field, value):
    p = _forged(model_file, tmp_path / "f.safetensors", meta=_set("config", field, value))
    with pytest.raises(CheckpointError, match=f"config.{field} must be .*, got {re.escape(repr(value))}"):
        load_model_file(p)


@pytest.mark.parametrize("raw", ["[1, 2]", '"hello"'])
def test_a_description_that_is_not_an_object_is_refused(model_file, tmp_path, raw):
    p = _forged(model_file, tmp_path / "f.safetensors", raw_meta=raw)
    with pytest.raises(CheckpointError, match="the description must be a JSON object, got"):
        load_model_file(p)


@pytest.mark.parametrize("config", [[1, 2], "hello"])
def test_a_config_that_is_not_an_object_is_refused(model_file, tmp_path, config):
    p = _forged(model_file, tmp_path / "f.safetensors", meta=lambda m: m.__setitem__("config", config))
    with pytest.raises(CheckpointError, match="config must be a JSON object, got"):
        load_model_file(p)


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.float64, torch.int32]
)  # int32: weights loaded as ints
@pytest.mark.parametrize("key", ["codes", "T.net.0.weight", "G.weight"])
def test_tensors_of_another_float_dtype_are_refused(model_file, tmp_path, key, dtype):
    def cast(t):
        prefix = key[:2]
        name = key if key in t else next(k for k in t if k.startswith(prefix) and k.endswith("weight"))
        t[name] = t[name].to(dtype)

    p = _forged(model_file, tmp_path / "f.safetensors", tensors=cast)
    with pytest.raises(CheckpointError, match=f"has dtype {str(dtype)[6:]}, expected float32"):
        load_model_file(p)


def test_a_description_whose_image_shape_is_not_gs_is_refused(model_file, tmp_path):
    """The description's image_shape was ignored ([-1, 28, 28] or "abc" loaded and sampled)."""
    for shape in ([-1, 28, 28], "abc", [3, 28, 28]):
        p = _forged(
            model_file, tmp_path / "f.safetensors", meta=lambda m, s=shape: m.__setitem__("image_shape", s)
        )
        with pytest.raises(CheckpointError, match=r"image_shape .* is not G's \[1, 28, 28\]"):
            load_model_file(p)


def test_codes_without_rows_are_refused(model_file, tmp_path):
    p = _forged(
        model_file, tmp_path / "f.safetensors", tensors=lambda t: t.__setitem__("codes", torch.zeros(0, 8))
    )
    with pytest.raises(CheckpointError, match=r"codes must be \(N >= 1, d\), got shape \(0, 8\)"):
        load_model_file(p)


def test_a_tiny_code_accept_is_refused_and_sampling_cannot_loop_for_ever(model_file, tmp_path):
    # code_accept = 1e-30 loaded, then sample(1) never ended
    p = _forged(
        model_file,
        tmp_path / "f.safetensors",
        tensors=lambda t: t.__setitem__("code_accept", torch.full((50,), 1e-30)),
    )
    low = 1.0 / balance.calibration_draws(50, 10_000.0)
    with pytest.raises(
        CheckpointError, match=f"code_accept must be at least {low:.3g} for 50 codes, got 1e-30"
    ):
        load_model_file(p)
    # the smallest table calibration could give loads; sampling then gives up with a one-line error
    accept = torch.full((50,), low)
    p = _forged(
        model_file, tmp_path / "g.safetensors", tensors=lambda t: t.__setitem__("code_accept", accept)
    )
    m = load_model_file(p)
    with pytest.raises(UsageError, match=r"balanced sampling kept 0 of .* draws for 1 samples"):
        m.sample(1)


def test_a_file_without_a_description_or_with_broken_json_in_it_is_named(model_file, tmp_path):
    """A safetensors file of someone else's (no glann_ext entry in its header) and a description that is not
    JSON at all are one-line CheckpointErrors naming the file, not a KeyError or JSONDecodeError."""
    tensors, _ = read_model_file(model_file)
    for name, metadata in (("plain", None), ("other", {"format": "pt"})):
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(save(tensors, metadata=metadata))
        with pytest.raises(CheckpointError, match="a safetensors file without a glann_ext model description"):
            load_model_file(path)
    path = _forged(model_file, tmp_path / "torn.safetensors", raw_meta='{"kind": ')
    with pytest.raises(
        CheckpointError,
        match=r"torn.safetensors: corrupt model description \(JSONDecodeError: Expecting value",
    ):
        load_model_file(path)
    # nested too deep for the parser: a RecursionError's traceback before
    path = _forged(model_file, tmp_path / "deep.safetensors", raw_meta="[" * 100000 + "]" * 100000)
    with pytest.raises(
        CheckpointError, match=r"deep.safetensors: corrupt model description \(RecursionError"
    ):
        load_model_file(path)


def test_a_valid_model_file_still_loads_and_samples(model_file):
    m = load_model_file(model_file)
    assert m.sample(3).shape == (3, 1, 28, 28)
    assert m.noise_scale == 1.0


def test_format_kind_and_non_finite_tensors_are_checked(model_file, tmp_path):
    p = _forged(model_file, tmp_path / "f.safetensors", meta=lambda m: m.__setitem__("format", 99))
    with pytest.raises(CheckpointError, match="format must be 1, got 99"):
        load_model_file(p)
    # a GLANN file called pixel_imle loaded G alone and ignored the codes and T
    p = _forged(model_file, tmp_path / "g.safetensors", meta=lambda m: m.__setitem__("kind", "pixel_imle"))
    with pytest.raises(CheckpointError, match=r"tensor (T\.|codes).* is not part of a pixel_imle model"):
        load_model_file(p)

    # a name that only begins like one of GLANN's own tensors is foreign too (found by mutation testing)
    def extra(t):
        t["codes_old"] = t["codes"].clone()

    p = _forged(model_file, tmp_path / "c.safetensors", tensors=extra)
    with pytest.raises(CheckpointError, match="tensor codes_old is not part of a glann model"):
        load_model_file(p)

    def nan_stats(t):
        key = next(k for k in t if k.endswith("running_mean"))
        t[key] = torch.full_like(t[key], float("nan"))

    p = _forged(model_file, tmp_path / "h.safetensors", tensors=nan_stats)
    with pytest.raises(CheckpointError, match="running_mean holds NaN or Inf values"):  # gave NaN images
        load_model_file(p)

    def negative_variance(t):
        key = next(k for k in t if k.endswith("running_var"))
        t[key] = -t[key]

    p = _forged(model_file, tmp_path / "v.safetensors", tensors=negative_variance)
    with pytest.raises(CheckpointError, match="running_var holds negative variances"):  # NaN images, too
        load_model_file(p)


def test_the_model_file_read_is_the_one_checked_not_one_swapped_in_after(model_file, tmp_path, monkeypatch):
    """read_model_file reads the bytes of the file open_regular checked; safe_open mapped the path again, so
    a file put in its place after the check (another model, or a FIFO that blocks) was the one loaded."""
    from glann_ext.models import files

    other = tmp_path / "other.safetensors"
    _forged(
        model_file, other, tensors=lambda t: t.update(codes=-t["codes"]), meta=lambda m: m.update(kind="x")
    )
    path = tmp_path / "m.safetensors"
    path.write_bytes(model_file.read_bytes())
    swap_in_after_the_check(monkeypatch, files, other)
    tensors, meta = read_model_file(path)
    want_tensors, want_meta = _read_unpatched(model_file)
    assert meta == want_meta and meta["kind"] == "glann"
    assert tensors_equal(tensors, want_tensors)


def _read_unpatched(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["glann_ext"])  # noqa: SIM118


def test_a_fifo_in_place_of_the_model_file_is_refused_without_blocking(tmp_path):
    p = tmp_path / "model.safetensors"
    os.mkfifo(p)  # safe_open blocked for ever waiting for a writer
    # in a child process, so that a regression fails after a timeout instead of hanging the session (a
    # thread's join timeout did not return while safe_open blocked)
    code = (
        "import sys\nfrom glann_ext.errors import CheckpointError\nfrom glann_ext.models import load_model_file\n"
        "try:\n    load_model_file(sys.argv[1])\nexcept CheckpointError as exc:\n    print(exc)\n"
    )
    try:
        child = subprocess.run([sys.executable, "-c", code, str(p)], check=False, capture_output=True, text=True,
                               timeout=60, **child_kwargs(tmp_path))  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("load_model_file blocked on a FIFO")
    want = "model.safetensors: not a readable model file (a FIFO, not a regular file)"
    assert child.returncode == 0 and want in child.stdout, child.stderr


def test_a_training_data_record_round_trips_and_a_forged_one_is_refused(model_file, tmp_path):
    """The record fit keeps of its images (models/training_data.py) survives save and load; one that is not
    a shape and a SHA-256 is refused like any other broken description, naming the field."""
    from glann_ext.models.training_data import images_digest

    model = load_model_file(model_file)
    assert model.training_data is None  # a model file without one
    model.training_data = images_digest(torch.zeros(3, 1, 28, 28))
    save_model(model, tmp_path / "r.safetensors")
    assert load_model_file(tmp_path / "r.safetensors").training_data == model.training_data
    for bad in ("x", {"shape": [3, 1, 28], "sha256": "0" * 64}, {"shape": [3, 1, 28, 28], "sha256": "XYZ"},
                {"shape": [3, 1, 28, 28], "sha256": "0" * 64, "extra": 1}, {"shape": [True, 1, 2, 2], "sha256": "0" * 64}):  # fmt: skip
        forged = _forged(
            tmp_path / "r.safetensors",
            tmp_path / "f.safetensors",
            meta=lambda m, bad=bad: m.update(training_data=bad),
        )
        with pytest.raises(CheckpointError, match="training_data must be null or"):
            load_model_file(forged)


# Found missing by a mutation test of sampling, eval and the config (2026-12-07).


def test_a_model_file_with_noise_scale_zero_is_refused_when_loaded():
    from glann_ext.models.generative import check_sampling_config

    with pytest.raises(ValueError, match="sample_noise_scale"):
        check_sampling_config({"sample_noise_scale": 0})
    with pytest.raises(ValueError, match="sample_noise_scale"):
        check_sampling_config({"sample_noise_scale": 0.0})
    assert check_sampling_config({"sample_noise_scale": 1e-9})["sample_noise_scale"] == 1e-9


def test_a_training_data_record_must_have_a_four_entry_shape():
    from glann_ext.models.training_data import checked_record

    good = {"shape": [2, 1, 4, 4], "sha256": "0" * 64}
    assert checked_record(good) == good
    for shape in ([2, 1, 4, 4, 1], [2, 1, 4], []):
        with pytest.raises(ValueError, match="training_data must be null or"):
            checked_record({**good, "shape": shape})


def test_codes_with_nan_norms_are_not_on_the_unit_sphere():
    from glann_ext.models.generative import check_unit_codes

    codes = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    check_unit_codes(codes)
    codes[3, 2] = float("nan")
    with pytest.raises(ValueError, match=r"codes must lie on the unit sphere .* at row 3"):
        check_unit_codes(codes)
    codes[3, 2] = float("inf")
    with pytest.raises(ValueError, match="at row 3"):
        check_unit_codes(codes)


# Found missing by a mutation test of the data loaders and the readers of user files (2026-12-07).


# A header length beyond the file's end is named as such ("a header of N bytes in SIZE"), before the JSON is
# read
@pytest.mark.parametrize("body", [b"{}", b'{"__metadata__": {"glann_ext": "{}"}}'])
def test_a_model_file_whose_header_length_passes_its_end_is_named_so(tmp_path, body):
    path = tmp_path / "long.safetensors"
    path.write_bytes((1000).to_bytes(8, "little") + body)
    size = 8 + len(body)
    with pytest.raises(
        CheckpointError,
        match=rf"long.safetensors: not a readable model file \(a header of 1,000 bytes in {size}\)",
    ):
        read_model_file(path)


# Mutation tests (2026-12-07): each test below fails on a one-line bug that no earlier test caught.


def test_save_model_replaces_the_file_and_never_writes_through_a_link(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(tiny_glann(seed=0), path)
    old = path.read_bytes()
    with open(path, "rb") as reader:
        save_model(tiny_glann(seed=1), path)
        assert reader.read() == old  # the old file, whole: replaced by a rename, not rewritten in place
    assert path.read_bytes() != old and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    path.unlink()
    path.symlink_to(victim)
    save_model(tiny_glann(seed=1), path)
    assert victim.read_text() == "keep me" and not path.is_symlink()
    load_model_file(path)


def test_a_header_length_one_byte_past_the_rest_of_the_file_is_named_so(tmp_path):
    """The bound on the header's length is the bytes after its 8-byte length field (size - 8), not the size:
    a length one byte past them is "a header of N bytes", before any JSON is read."""
    body = b'{"__metadata__": {"glann_ext": "{}"}}'
    path = tmp_path / "long.safetensors"
    path.write_bytes((len(body) + 1).to_bytes(8, "little") + body)
    with pytest.raises(CheckpointError, match=rf"a header of {len(body) + 1} bytes in {8 + len(body)}\)"):
        read_model_file(path)
