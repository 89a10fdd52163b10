"""The README's two set-up commands, in order, in one environment: install, run a kernel,
reinstall editable, import from outside the repository.

Numba used to write its kernel cache into site-packages/tinygrad_lm/kernels/cpu/__pycache__;
`pip install -e` then removed the package but not those files, and the leftover folder (no
__init__.py) shadowed the editable install as an empty namespace package. The environment here
is a fresh venv (no pip of its own) that borrows NumPy/Numba from the test environment through a
.pth line; this environment's pip installs into it (--python), offline (--no-build-isolation)."""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KERNEL_RUN = """
import tinygrad_lm as tg, tinygrad_lm.functional as F
assert tg.kernel_mode() == "fast"
x = tg.randn(4, 8, requires_grad=True)
F.softmax(x, axis=-1).sum().backward()      # compiles (and caches) the Numba softmax kernels
"""


def _copy_source(dst: Path) -> Path:
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    for name in ("tinygrad_lm", "kernels"):
        shutil.copytree(REPO / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    py = path / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "borrowed.pth").write_text("\n".join(sorted(ours)) + "\n")  # NumPy, Numba, tqdm, setuptools
    return py


def _pip_install(py: Path, *args: str, cwd: Path):
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        "--no-build-isolation", *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _run(py: Path, code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(py), "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_install_run_reinstall_editable_import_from_outside(tmp_path):
    pytest.importorskip("setuptools", minversion="68")  # the dev extra brings it
    src = _copy_source(tmp_path / "src")
    py = _venv(tmp_path / "venv")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}

    _pip_install(py, str(src), cwd=tmp_path)
    r = _run(py, "import tinygrad_lm, pathlib; print(pathlib.Path(tinygrad_lm.__file__).parent)", outside, env)
    installed = Path(r.stdout.strip())
    assert installed.is_relative_to(tmp_path / "venv"), r.stdout + r.stderr
    before = {p for p in installed.rglob("*") if p.is_file()}

    r = _run(py, KERNEL_RUN, outside, env)
    assert r.returncode == 0, r.stderr
    # nothing but Python's own bytecode was added to the installed package...
    added = {p for p in installed.rglob("*") if p.is_file()} - before
    assert not [p for p in added if p.suffix != ".pyc"], sorted(map(str, added))
    # ...because the compiled kernels went to the user's cache folder
    assert list((tmp_path / "xdg" / "tinygrad_lm" / "numba").rglob("softmax*.nbi"))

    _pip_install(py, "-e", str(src), cwd=tmp_path)
    r = _run(py, "import tinygrad_lm as tg; print(tg.__file__); print(tg.randn(2).shape)", outside, env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(src / "tinygrad_lm" / "__init__.py"), "(2,)"]
    r = _run(py, KERNEL_RUN, outside, env)  # and the editable install runs kernels (from the cache or not)
    assert r.returncode == 0, r.stderr
