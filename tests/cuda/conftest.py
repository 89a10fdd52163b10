"""The CUDA kernels (kernels/cuda) under Numba's CUDA simulator, in a process of their own:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -p no:cacheprovider tests/cuda

Numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, and the main test run imports
it for the CPU kernels long before these files, so the simulator cannot be switched on inside
it: without the variable this folder is not collected at all (.ci/run runs it separately). The
simulator runs each GPU thread as a Python thread: it checks indexing and results on small
arrays, but not races or missing syncthreads (those are reviewed by hand, see kernels/cuda)."""
import os

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")

if not SIMULATOR:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session", autouse=True)
def _simulator_is_on():
    import numba
    assert numba.config.ENABLE_CUDASIM, "tests/cuda must run with NUMBA_ENABLE_CUDASIM=1 set before numba loads"
