"""The one place that decides how CPU kernels are compiled and launched.

parallel: prange loops over rows/heads. cache: compiled code is reused across processes; it is
kept in the user's cache folder (tinygrad_lm.cache), never inside the installed package.
fastmath: only reassociation/contraction (lets LLVM vectorize sums; changes results at the
level of float32 rounding), never 'nnan'/'ninf', because -inf masks and NaN checks must work.
error_model="numpy": a float division by zero gives inf/nan as in the NumPy reference, instead
of Python's ZeroDivisionError check, a branch on every division that stops vectorization.

Every kernel is compiled twice, parallel and serial, and a call picks by problem size:
starting Numba's thread team costs tens of microseconds (much more when the other core is
busy), which is more than the whole work of a decode step's small rows."""
import os
import sys
import types

# Numba's OpenMP workers spin after a parallel region and steal cycles from the OpenBLAS calls
# that follow (measured on 2-core machines); passive waiting fixes it. A user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numba  # noqa: E402

from tinygrad_lm.backend import pin_blas_threads_for_kernels  # noqa: E402
from tinygrad_lm.cache import numba_caching  # noqa: E402

BLAS_PINNED = pin_blas_threads_for_kernels()  # see its docstring: 2 BLAS threads + Numba's team fight

FASTMATH = {"reassoc", "contract", "arcp"}
OPTIONS = dict(fastmath=FASTMATH, error_model="numpy")
# Below this many elements in the first array argument a kernel runs serial. Waking Numba's
# sleeping thread team costs ~50-100 us: measured at the tiny GPT's shapes, serial builds ran
# cross-entropy (768 x 65) 160 -> 64 us and layer norm backward (768 x 128) 218 -> 70 us, while
# softmax over (12, 4, 64, 64) (196k elements) stayed faster in parallel.
PARALLEL_MIN_ELEMENTS = 1 << 17
FORCE_BUILD = None  # "parallel" or "serial" overrides the sizes (tests compare the two builds)


class SizedKernel:
    """A kernel with a parallel and a serial build; calls go to one by the size of the first argument."""

    def __init__(self, fn, parallel_from=None):
        self.parallel_from = PARALLEL_MIN_ELEMENTS if parallel_from is None else parallel_from
        self.parallel = _njit(fn, parallel=True)
        # a separate function object with its own qualified name, so the two builds get separate
        # cache entries (one function jitted twice shares one cache entry)
        twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                                  fn.__closure__)
        twin.__qualname__ = fn.__qualname__ + "_serial"
        twin.__module__ = fn.__module__
        self.serial = _njit(twin, parallel=False)
        self.__name__, self.__doc__, self.__wrapped__ = fn.__name__, fn.__doc__, fn

    def __call__(self, *args):
        force = FORCE_BUILD
        big = args[0].size >= self.parallel_from if force is None else force == "parallel"
        return (self.parallel if big else self.serial)(*args)


def kernel(fn=None, *, parallel_from=None):
    """A cached CPU kernel, parallel for large inputs and serial for small ones.

    ``@kernel`` or ``@kernel(parallel_from=n)`` for a kernel whose work per element of its
    first argument is large (attention: a query row costs a pass over every key)."""
    if fn is None:
        return lambda f: SizedKernel(f, parallel_from)
    return SizedKernel(fn, parallel_from)


def serial(fn):
    """A serial, cached CPU kernel (for work too racy to split)."""
    return _njit(fn, parallel=False)


_BUILDS = []  # every compiled build, for cache_is_warm()


def _njit(fn, parallel: bool):
    with numba_caching() as cache:  # the cache folder is fixed when a function is decorated
        build = numba.njit(parallel=parallel, cache=cache, **OPTIONS)(fn)
    _BUILDS.append(build)
    return build


def cache_folder() -> str | None:
    """The folder Numba keeps these kernels' compiled code in (None: no disk cache)."""
    for build in _BUILDS:
        cache = getattr(build, "_cache", None)
        path = getattr(cache, "cache_path", None)  # a NullCache (cache=False) has none
        if path:
            return path
    return None


def cache_is_warm() -> bool:
    """True once these kernels have been compiled into their disk cache folder (a first run
    compiles for about 15 s on 2 cores). The folder is this source folder's own, and Numba
    names each kernel's index there '<module>.<kernel>-<line>.py<version>.nbi'."""
    folder = cache_folder()
    tag = f".py{sys.version_info.major}{sys.version_info.minor}.nbi"
    return folder is not None and os.path.isdir(folder) and any(e.endswith(tag) for e in os.listdir(folder))
