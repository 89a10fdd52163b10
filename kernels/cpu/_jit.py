"""The one place that decides how CPU kernels are compiled.

parallel: prange loops over rows/heads. cache: compiled code is reused across processes.
fastmath: only reassociation/contraction (lets LLVM vectorize sums; changes results at the
level of float32 rounding), never 'nnan'/'ninf', because -inf masks and NaN checks must work."""
import os

# Numba's OpenMP workers spin after a parallel region and steal cycles from the OpenBLAS calls
# that follow (measured on 2-core machines); passive waiting fixes it. A user's setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import numba  # noqa: E402

FASTMATH = {"reassoc", "contract", "arcp"}


def kernel(fn):
    """A parallel, cached CPU kernel."""
    return numba.njit(parallel=True, cache=True, fastmath=FASTMATH)(fn)


def serial(fn):
    """A serial, cached CPU kernel (for work too small or too racy to split)."""
    return numba.njit(parallel=False, cache=True, fastmath=FASTMATH)(fn)
