"""Where caches go (tinygrad_lm.cache): the user's cache folder, never the installed package."""
import warnings

import pytest
from numba.core import config

from tinygrad_lm import cache


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in (cache.CACHE_ENV_VAR, "XDG_CACHE_HOME", "NUMBA_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_cache_dir_order(clean_env, tmp_path):
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "tinygrad_lm"
    clean_env.setenv("XDG_CACHE_HOME", "relative/path")  # the XDG spec: a relative path is ignored
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "tinygrad_lm"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "tinygrad_lm"
    clean_env.setenv(cache.CACHE_ENV_VAR, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"
    assert cache.numba_cache_dir() == tmp_path / "mine" / "numba"
    clean_env.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-own"))  # a user's Numba setting wins
    assert cache.numba_cache_dir() == tmp_path / "numba-own"


def test_numba_caching_points_numba_at_the_cache_only_inside_the_block(clean_env, tmp_path):
    clean_env.setenv(cache.CACHE_ENV_VAR, str(tmp_path / "c"))
    before = config.CACHE_DIR
    with cache.numba_caching() as enabled:
        assert enabled is True
        assert config.CACHE_DIR == str(tmp_path / "c" / "numba")
    assert (tmp_path / "c" / "numba").is_dir()  # created on demand
    assert config.CACHE_DIR == before


def test_unwritable_cache_folder_compiles_without_a_disk_cache(clean_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    clean_env.setenv(cache.CACHE_ENV_VAR, str(blocker / "cache"))
    clean_env.setattr(cache, "_warned", False)
    with pytest.warns(RuntimeWarning, match=r"cannot write the kernel cache folder .*a-file/cache/numba"):
        with cache.numba_caching() as enabled:
            assert enabled is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not per kernel
        with cache.numba_caching() as enabled:
            assert enabled is False
