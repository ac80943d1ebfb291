"""What an installed glann_ext and its checkout do around the package itself: one version, the license,
the message when the checkout's unbuilt glann_ext/ shadows the installed one, the benchmarks measuring the
installed package from the checkout, no crash where no home folder can be found, a compiled module of another
release named at import, and an sdist that holds every file of the build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
from glann_testing import child_kwargs

import glann_ext
from glann_ext import _C

ROOT = Path(__file__).resolve().parents[1]
# drops scikit-build-core's editable finder (a development install), so that the subprocess imports as a
# plain `pip install .` does: from sys.path, in its order
PLAIN_IMPORTS = (
    "import sys; sys.meta_path = [f for f in sys.meta_path if 'ScikitBuild' not in type(f).__name__]; "
)


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_one_version_and_the_license_text_ship_with_the_package():
    project = _pyproject()["project"]
    assert glann_ext.__version__ == project["version"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()  # scikit-build-core ships LICEN[CS]E* files
    assert project["license"] == {"text": "MIT"}


def _checkout_and_install(tmp_path: Path, *, dist_info: bool = True) -> tuple[Path, Path]:
    """(a checkout: glann_ext/ without its compiled module and benchmarks/; a site folder holding a built
    glann_ext, as `pip install .` leaves one, with its dist-info)."""
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    ignore = shutil.ignore_patterns("__pycache__", "_C*.so", "_C*.pyd")
    shutil.copytree(ROOT / "glann_ext", checkout / "glann_ext", ignore=ignore)
    shutil.copytree(ROOT / "benchmarks", checkout / "benchmarks", ignore=shutil.ignore_patterns("quality"))
    shutil.copytree(ROOT / "glann_ext", site / "glann_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(_C.__file__, site / "glann_ext")  # the compiled module, wherever this install keeps it
    if dist_info:
        info = site / f"glann_ext-{glann_ext.__version__}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: glann_ext\nVersion: {glann_ext.__version__}\n"
        )
    return checkout, site


def _python(code: str, cwd: Path, site: Path | None) -> subprocess.CompletedProcess:
    """``code`` run as a plain install imports (no editable finder), with ``site`` alone on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [sys.executable, "-c", PLAIN_IMPORTS + code],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unbuilt_checkout_that_shadows_the_installed_package_says_so(tmp_path):
    checkout, site = _checkout_and_install(tmp_path)
    done = _python("import glann_ext", checkout, site)  # `python -c`/`-m` put the checkout first
    assert done.returncode == 1
    assert f"glann_ext was imported from the source checkout {checkout / 'glann_ext'}" in done.stderr
    assert f"the installed glann_ext is {site / 'glann_ext'}" in done.stderr
    assert "torchrun --no-python glann" in done.stderr and "circular import" not in done.stderr
    # a compiled module that does not load: its own error
    (checkout / "glann_ext" / Path(_C.__file__).name).write_bytes(b"not a shared object")
    done = _python("import glann_ext", checkout, site)
    assert f"compiled module in {checkout / 'glann_ext'} failed to load:" in done.stderr


def test_a_package_never_built_says_so(tmp_path, monkeypatch):
    from glann_ext import _ext

    (tmp_path / "glann_ext").mkdir()
    monkeypatch.setattr(_ext, "__file__", str(tmp_path / "glann_ext" / "_ext.py"))
    monkeypatch.setattr(_ext, "_installed_elsewhere", lambda here: None)
    message = _ext._missing_module_message(ImportError("cannot import name '_C'"))
    assert message.startswith(f"glann_ext's compiled module _C is missing from {tmp_path / 'glann_ext'}: the")


def test_benchmarks_run_from_the_checkout_measure_the_installed_package(tmp_path):
    checkout, site = _checkout_and_install(tmp_path, dist_info=False)
    code = "import benchmarks.latent_gap, glann_ext; print(glann_ext.__file__)"
    done = _python(code, checkout, site)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(site / "glann_ext" / "__init__.py")
    # built in place: the checkout's own package is the one measured
    shutil.copy(_C.__file__, checkout / "glann_ext")
    done = _python(code, checkout, site)
    assert done.stdout.strip() == str(checkout / "glann_ext" / "__init__.py"), done.stderr


def test_the_command_and_training_imports_need_no_home_folder(tmp_path):
    code = textwrap.dedent(
        """
        import pathlib, sys
        def no_home(cls=None):
            raise RuntimeError("Could not determine home directory.")
        pathlib.Path.home = classmethod(no_home)  # as with no $HOME and a uid without a passwd entry
        import glann_ext.train, glann_ext.evaluate
        from glann_ext.cli import main
        from glann_ext.data import mnist
        from glann_ext import evaluate
        assert evaluate.DEFAULT_CACHE_DIR.parent == mnist.CACHE_DIR  # one folder a process
        print(mnist.CACHE_DIR, oct(mnist.CACHE_DIR.stat().st_mode & 0o777))
        sys.exit(main(["--version"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        **child_kwargs(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    cache, mode = done.stdout.split()[:2]
    assert Path(cache).name.startswith("glann_ext-cache-") and mode == "0o700"
    assert done.stdout.strip().endswith(f"glann_ext {glann_ext.__version__}")
    assert not Path(cache).exists()  # nothing was cached in it: removed at exit


def test_a_failed_nvcc_probe_kept_in_the_build_folder_is_probed_again(tmp_path):
    """pip reuses build/{wheel_tag}: CMake's cached "no CUDA compiler" from a build before nvcc was installed
    kept every later build CPU-only (AUTO) or failing (ON) until build/ was deleted."""
    cmake, nvcc = shutil.which("cmake"), shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    pybind11 = pytest.importorskip("pybind11")
    if cmake is None or not Path(nvcc).is_file():
        pytest.skip("needs cmake and nvcc")
    cmd = [
        cmake, "-S", str(ROOT), "-B", str(tmp_path / "build"), f"-DPython_EXECUTABLE={sys.executable}",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}", "-DGLANN_EXT_CUDA=AUTO",
        "-DCMAKE_CUDA_COMPILER=CMAKE_CUDA_COMPILER-NOTFOUND",  # what the earlier probe left in the cache
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(nvcc).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CUDAARCHS", None)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert "glann_ext: building CUDA kernels for 75-real;80-real;86-real;89-real;90" in done.stdout, (
        done.stdout + done.stderr
    )
    # CUDAARCHS (CMake's own variable for the default architectures) is read, not overridden
    env["CUDAARCHS"] = "90"
    done = subprocess.run(
        [*cmd[:3], str(tmp_path / "fresh"), *cmd[4:-1]],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert "glann_ext: building CUDA kernels for 90\n" in done.stdout, done.stdout + done.stderr


def test_a_compiled_module_of_another_release_is_named_at_import(tmp_path):
    """An editable or in-place build left from before a `git pull` runs the old kernels under the new Python
    code; the import says so and how to rebuild. This install's module matches (its import warns nothing)."""
    from glann_ext._info import stale_module_message

    message = stale_module_message("0.3.4", "0.3.5", "/site/glann_ext/_C.so")
    assert message is not None
    assert "/site/glann_ext/_C.so was built from version 0.3.4" in message
    assert "glann_ext 0.3.5" in message and "pip install ." in message
    assert stale_module_message("0.3.5", "0.3.5", "x") is None
    assert stale_module_message("dev", "0.3.5", "x") is None  # scripts/dev_build.sh: rebuilt by hand
    child = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", "import glann_ext"],
        capture_output=True,
        text=True,
        check=False,
        **child_kwargs(tmp_path),
    )
    assert child.returncode == 0, child.stderr  # this install's module matches
    assert _C.__version__ in ("dev", glann_ext.__version__)
    # the same module under Python files of another release: the import warns (before anything else reads
    # the module, so a missing binding cannot stop it first)
    _, site = _checkout_and_install(tmp_path)
    info = site / "glann_ext" / "_info.py"
    info.write_text(
        info.read_text().replace(f'__version__ = "{glann_ext.__version__}"', '__version__ = "9.9.9"')
    )
    code = "import warnings; warnings.simplefilter('error', RuntimeWarning); import glann_ext"
    child = _python(code, tmp_path, site)
    assert child.returncode != 0
    module = site / "glann_ext" / Path(_C.__file__).name
    assert (
        f"RuntimeWarning: glann_ext 9.9.9: its compiled module {module} was built from version"
        in child.stderr
    )
    assert f"version {_C.__version__}, so its kernels" in child.stderr


def _tracked_files() -> list[str]:
    """The checkout's tracked files (skips outside a git checkout: an unpacked sdist has no history)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in listed.stdout.decode().split("\0") if f]


def test_the_sdist_holds_every_file_the_build_and_the_package_need(tmp_path):
    """`pip install glann_ext-X.tar.gz` builds from the sdist alone: every tracked file of the build (CMake,
    the kernels, the bindings, the package) must be in it, and nothing of a local build or run."""
    pytest.importorskip("scikit_build_core")
    tracked = _tracked_files()
    code = "import sys; from scikit_build_core.build import build_sdist; print(build_sdist(sys.argv[1]))"
    built = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert built.returncode == 0, built.stderr
    with tarfile.open(tmp_path / built.stdout.strip().splitlines()[-1]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    needed = [
        f
        for f in tracked
        if f.startswith(("csrc/", "python/", "glann_ext/"))
        or f in ("CMakeLists.txt", "pyproject.toml", "LICENSE", "README.md")
    ]
    assert len(needed) > 100
    assert [f for f in needed if f not in names] == []
    local = [
        n for n in names if n.startswith(("build/", ".venv/", "runs/", "data/")) or n.endswith((".so", ".pt"))
    ]
    assert local == []


def test_dir_lists_the_public_names_and_subpackages_only():
    """Tab completion showed the module's own imports (Any, importlib, annotations) beside the API."""
    public = {n for n in dir(glann_ext) if not n.startswith("_")}
    assert public == {*glann_ext.__all__, *glann_ext._SUBMODULES}
    assert "__version__" in dir(glann_ext)
