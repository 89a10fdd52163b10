"""Where tinygrad_lm keeps what it can rebuild: token caches and compiled Numba kernels.

One user cache folder, never the installed package: ``$TINYGRAD_LM_CACHE`` if set, else
``$XDG_CACHE_HOME/tinygrad_lm``, else ``~/.cache/tinygrad_lm``. Sub-folders are created on
demand. Numba's own default (``cache=True``) writes next to the source file, i.e. into
``site-packages/tinygrad_lm/kernels/cpu/__pycache__``: files pip does not know about, which
outlive ``pip uninstall`` and then shadow a later editable install as an empty namespace
package. So every kernel tinygrad_lm compiles is pointed at ``<cache>/numba`` instead (unless
the user chose ``NUMBA_CACHE_DIR``), and compiles without a disk cache, with a warning, when
that folder cannot be written."""
from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

CACHE_ENV_VAR = "TINYGRAD_LM_CACHE"


def cache_dir() -> Path:
    """The cache root (not created here)."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative = unset
    return base / "tinygrad_lm"


def numba_cache_dir() -> Path:
    """Where compiled kernels go: ``$NUMBA_CACHE_DIR`` if the user set it, else ``<cache>/numba``."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    return Path(env).expanduser() if env else cache_dir() / "numba"


_WRITABLE: dict[Path, bool] = {}  # checked once per folder and process (every kernel decoration asks)


def _writable(folder: Path) -> bool:
    if folder not in _WRITABLE:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
            _WRITABLE[folder] = True
        except OSError:
            _WRITABLE[folder] = False
    return _WRITABLE[folder]


_warned = False


@contextlib.contextmanager
def numba_caching():
    """Decorate kernels inside this block with ``cache=<the value it yields>``.

    Numba picks a function's cache folder when it is decorated, from ``numba.config.CACHE_DIR``;
    this sets that to :func:`numba_cache_dir` for the block only, so a user's own Numba code keeps
    its own settings. Yields False (no disk cache, one warning) when the folder is not writable:
    Numba would otherwise fall back to the package's own folder."""
    global _warned
    from numba.core import config
    folder = numba_cache_dir()
    if not _writable(folder):
        if not _warned:
            warnings.warn(f"cannot write the kernel cache folder {folder}; kernels are compiled anew in every "
                          f"process (set {CACHE_ENV_VAR} to a writable folder)", RuntimeWarning, stacklevel=3)
            _warned = True
        yield False
        return
    old = config.CACHE_DIR
    config.CACHE_DIR = str(folder)
    try:
        yield True
    finally:
        config.CACHE_DIR = old
