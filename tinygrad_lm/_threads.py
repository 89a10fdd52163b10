"""Thread settings that must be made before NumPy loads OpenBLAS (imported first by the package).

OpenBLAS's idle worker threads spin for a long time after each call (2^28 cycles, ~0.1 s, by
default) before they sleep. Between two matmuls, the fast CPU kernels run on Numba's thread
team, and a spinning BLAS worker then takes a core from it: on the 2-core machines a tiny-GPT
training step with 2 BLAS threads took 72-89 ms with the default and 55-58 ms with
OPENBLAS_THREAD_TIMEOUT=4 (workers sleep almost at once; waking one costs microseconds per
matmul). OpenBLAS reads the variable only when it loads, so it is set here only while NumPy
is not imported yet, and a user's own setting always wins."""
import os
import sys

BLAS_TIMEOUT_VAR = "OPENBLAS_THREAD_TIMEOUT"

if "numpy" not in sys.modules:
    os.environ.setdefault(BLAS_TIMEOUT_VAR, "4")

# True when OpenBLAS starts (or likely started) with a short idle timeout; if not, the CPU
# kernels fall back to one BLAS thread (backend.pin_blas_threads_for_kernels).
def _short_timeout(value: str | None) -> bool:
    try:
        return value is not None and int(value) <= 8
    except ValueError:  # OpenBLAS's own parser decides what it makes of a bad value; assume the default
        return False


BLAS_SLEEPS_WHEN_IDLE = _short_timeout(os.environ.get(BLAS_TIMEOUT_VAR))
