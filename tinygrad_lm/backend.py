"""Devices and array modules.

"cpu" arrays are NumPy arrays, "cuda" arrays are CuPy arrays. Every op is written
once against ``xp`` (the array module of its inputs), so the same reference code
runs on both devices. The helpers here are the only place that knows about CuPy.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from collections import namedtuple

import numpy as np

from . import _threads

DEVICES = ("cpu", "cuda")
FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
DEFAULT_FLOAT = np.dtype(np.float32)

_CUDA_HINT = ("install CuPy for your CUDA version (pip install 'tinygrad_lm[cuda]' for CUDA 12, "
              "or cupy-cuda13x for CUDA 13) on a machine with an NVIDIA GPU and driver")


# ---- the host allocator ------------------------------------------------------------------

def _tune_glibc_malloc() -> dict | None:
    """Keep freed memory in the heap for the next training step instead of handing it back to the OS.

    Autograd keeps each op's output alive on the tape until backward() frees the graph, so a
    training step allocates many MB and frees them all at once. By default glibc serves every
    array over 32 MiB (at most; its threshold cannot go higher) with a fresh mmap and unmaps it on
    free, and gives the top of the heap back to the OS (trim), so the next step pays a page fault
    per 4 KiB page again. On the project's 2-core VMs that cost more than the math: the small
    GPT's step (its MLP activations are 100 MB arrays) took 7.6-7.8 s with fresh mappings and
    6.0 s with the memory kept, and ``a * c`` on (768, 128) float32 kept on the tape took ~400 us
    instead of ~50 us. So: no mmap for big arrays (M_MMAP_MAX = 0; they come from the heap and
    are reused) and no trimming (M_TRIM_THRESHOLD = -1). The cost: the memory of the largest
    step stays with the process until it exits (the peak itself does not grow). Linux with glibc
    only; set TINYGRAD_LM_NO_MALLOPT=1 to opt out; glibc's own MALLOC_MMAP_MAX_,
    MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ variables, when set, are left to rule.
    Returns what was set (None if nothing was)."""
    if os.environ.get("TINYGRAD_LM_NO_MALLOPT", "") not in ("", "0") or not sys.platform.startswith("linux"):
        return None
    if any(v in os.environ for v in ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (ValueError, OSError, AttributeError):  # not glibc (e.g. musl), or no libc.so.6
        return None
    codes = {"M_TRIM_THRESHOLD": -1, "M_MMAP_MAX": -4}  # from glibc's malloc.h
    settings = {"M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}  # -1: "disables trimming completely" (man mallopt)
    applied = {}
    for name, value in settings.items():
        if mallopt(ctypes.c_int(codes[name]), ctypes.c_int(value)) == 1:  # 1 = success
            applied[name] = value
    return applied or None


ALLOCATOR_TUNING = _tune_glibc_malloc()  # once, at import; see the docstring above


def release_free_memory() -> bool:
    """Give the memory of freed arrays back to the system (glibc's malloc_trim). With the tuning
    above nothing is returned by itself; call this after a one-off drop in size that should show
    (float weights replaced by quantized ones, a loaded model's temporary buffers). True if done."""
    if ALLOCATOR_TUNING is None:
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(ctypes.c_size_t(0)))
    except (OSError, AttributeError):
        return False


# ---- devices ---------------------------------------------------------------------------------

def normalize_device(device) -> str:
    """'cpu' or 'cuda' from a user-given name (None means 'cpu'); unknown names raise ValueError."""
    if device is None:
        return "cpu"
    name = str(device).lower()
    if name.startswith("cuda:"):  # a single GPU is supported; accept PyTorch's spelling of it
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")
    return name


def cupy_module():
    """Return the cupy module if a usable NVIDIA GPU is present, else raise RuntimeError.

    Asks CuPy (not numba.cuda.is_available(), which is True under the CUDA simulator)."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError(f"device 'cuda' needs CuPy, which is not installed: {_CUDA_HINT}") from e
    try:
        ok = cupy.cuda.is_available()
    except Exception:  # driver libraries missing
        ok = False
    if not ok:
        raise RuntimeError(f"device 'cuda' was requested but CuPy finds no usable GPU: {_CUDA_HINT}")
    return cupy


def cuda_available() -> bool:
    """True when CuPy is installed and sees a GPU."""
    try:
        cupy_module()
        return True
    except RuntimeError:
        return False


def get_xp(device: str):
    """The array module for a (normalized) device name."""
    return np if device == "cpu" else cupy_module()


def xp_of(arr):
    """The array module an array belongs to (numpy for anything that is not a CuPy array)."""
    return np if isinstance(arr, np.ndarray) or type(arr).__module__.split(".")[0] != "cupy" else cupy_module()


def device_of(arr) -> str:
    return "cpu" if isinstance(arr, (np.ndarray, np.generic)) else "cuda"


def to_device(arr, device: str):
    """Copy an array to the given device (no copy if it is already there)."""
    if device_of(arr) == device:
        return arr
    if device == "cpu":
        return arr.get()
    return cupy_module().asarray(arr)


def to_numpy(arr) -> np.ndarray:
    return arr if isinstance(arr, np.ndarray) else (np.asarray(arr) if isinstance(arr, np.generic) else arr.get())


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


# ---- helpers shared by many ops (one place each) ---------------------------------------

def unbroadcast(grad, shape):
    """Sum a broadcast gradient back down to an operand's shape (the backward of broadcasting)."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    ones = tuple(lead + i for i, s in enumerate(shape) if s == 1 and grad.shape[lead + i] != 1)
    if not ones and shape:  # only new leading axes (a bias): summing them away leaves `shape`
        return grad.sum(axis=tuple(range(lead)))  # a fresh array, so a leaf can keep it without a copy
    out = grad.sum(axis=tuple(range(lead)) + ones, keepdims=True)
    return out.reshape(shape) if lead else out


def normalize_axis(axis, ndim: int, op: str = "reduction") -> tuple[int, ...]:
    """An int, tuple of ints or None as a sorted tuple of non-negative axes, with a clear error."""
    if axis is None:
        return tuple(range(ndim))
    if not isinstance(axis, (int, np.integer, tuple, list)):
        raise TypeError(f"{op}: axis must be an int, a tuple of ints or None, got {axis!r}")
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)):
            raise TypeError(f"{op}: axis must be an int, a tuple of ints or None, got {axis!r}")
        if not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{op}: axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(int(a) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: repeated axis in {axis!r}")
    return tuple(sorted(out))


def scatter_add(target, index, values):
    """target[index] += values, accumulating repeated indices (np.add.at / cupyx.scatter_add)."""
    if isinstance(target, np.ndarray):
        np.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)
    return target


_erf_cpu = None


def _erf_scalar(v):
    return math.erf(v)


def erf(x):
    """Elementwise error function in the dtype of x (NumPy has none; Numba's math.erf is exact libm)."""
    global _erf_cpu
    if isinstance(x, (np.ndarray, np.generic)):  # a 0-d op result may be a NumPy scalar
        x = np.asarray(x)
        if _erf_cpu is None:
            import numba

            from .cache import numba_caching
            with numba_caching() as cache:
                _erf_cpu = numba.vectorize(["float32(float32)", "float64(float64)"], cache=cache)(_erf_scalar)
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        return _erf_cpu(x)
    from cupyx.scipy.special import erf as cupy_erf
    return cupy_erf(x)


# ---- BLAS threads ---------------------------------------------------------------------------

def _openblas_function(name: str):
    """A function of the OpenBLAS library NumPy loaded, found by ``name`` (e.g. "get_num_threads")
    under the usual symbol spellings (scipy-openblas wheels prefix ``scipy_`` and add ``64_``)."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in (f"scipy_openblas_{name}64_", f"openblas_{name}64_", f"openblas_{name}"):
            fn = getattr(lib, symbol, None)
            if fn is not None:
                return fn
    return None


def blas_threads() -> int | None:
    """Threads OpenBLAS uses now (None when NumPy's BLAS is not an OpenBLAS we can find)."""
    fn = _openblas_function("get_num_threads")
    return int(fn()) if fn is not None else None


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count at run time (OPENBLAS_NUM_THREADS only works before import).

    One thread is the steadier choice when other processes load the machine: with every core
    busy, a multi-threaded BLAS call waits for its slowest thread to be scheduled (we saw a
    (256, 256) matmul go from 0.3 ms to 16 ms on 2 cores under a load of 3)."""
    fn = _openblas_function("set_num_threads")
    if fn is None:
        return False
    fn(ctypes.c_int(n))
    return blas_threads() == n


def pin_blas_threads_for_kernels() -> bool:
    """One OpenBLAS thread when the parallel CPU kernels load, but only where OpenBLAS's idle
    threads spin (see tinygrad_lm._threads) and the user chose no thread count.

    A spinning BLAS worker takes a core from Numba's thread team between matmuls. With idle
    BLAS threads asleep (OPENBLAS_THREAD_TIMEOUT set before NumPy loaded, the default when
    tinygrad_lm is imported first), both libraries use both cores: tiny GPT train step on the
    2-core machines, 2 BLAS threads 55-58 ms vs 1 thread 75-80 ms. When NumPy was imported
    first, the timeout cannot take effect and 2 spinning BLAS threads measured 67-103 ms."""
    if _threads.BLAS_SLEEPS_WHEN_IDLE:
        return False
    if any(os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "GOTO_NUM_THREADS")):
        return False
    return set_blas_threads(1)


# ---- kernel selection: reference <-> fast ---------------------------------------------------
# Hot ops (softmax, cross_entropy, layer_norm, rms_norm, gelu, attention, embedding, adamw) ask
# `implementation(op, array)` for a (forward, backward) pair. The reference pairs live next to
# their Functions in tinygrad_lm/ops; fast pairs are registered per device by kernels/ and are
# imported on first use (Numba's import and compile cost is paid only when a kernel runs).

Impl = namedtuple("Impl", "forward backward")
KERNEL_MODES = ("reference", "fast")
KERNELS_ENV = "TINYGRAD_LM_KERNELS"
_REFERENCE: dict = {}                        # op -> Impl(forward, backward)
_FAST_LOADERS = {                            # device -> "module" whose FAST dict maps op -> Impl
    "cpu": "tinygrad_lm.kernels.cpu.ops",
    "cuda": "tinygrad_lm.kernels.cuda.ops",
}
_fast_tables: dict = {}                      # device -> loaded FAST dict (or {} when unavailable)
_FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _mode_from_env() -> str:
    mode = os.environ.get(KERNELS_ENV, "fast").strip().lower() or "fast"
    if mode not in KERNEL_MODES:
        raise ValueError(f"{KERNELS_ENV}={mode!r}: expected one of {KERNEL_MODES}")
    return mode


_kernel_mode = _mode_from_env()


def register_reference(op: str, forward, backward) -> None:
    """Declare the readable reference implementation of a hot op."""
    _REFERENCE[op] = Impl(forward, backward)


def kernel_mode() -> str:
    """'reference' or 'fast': which implementations hot ops use in this process."""
    return _kernel_mode


class use_kernels:
    """Select "reference" or "fast" kernels for the whole process; also a context manager.

        tinygrad_lm.use_kernels("reference")          # from now on
        with tinygrad_lm.use_kernels("fast"): ...     # inside the block only"""

    def __init__(self, mode: str):
        global _kernel_mode
        if mode not in KERNEL_MODES:
            raise ValueError(f"use_kernels: mode must be one of {KERNEL_MODES}, got {mode!r}")
        self._previous, _kernel_mode = _kernel_mode, mode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        global _kernel_mode
        _kernel_mode = self._previous
        return False


def fast_table(device: str) -> dict:
    """The fast kernels registered for a device (loading them on first use); {} if none load."""
    if device not in _fast_tables:
        import importlib
        try:
            _fast_tables[device] = importlib.import_module(_FAST_LOADERS[device]).FAST
        except (ImportError, AttributeError, RuntimeError):
            _fast_tables[device] = {}
    return _fast_tables[device]


def implementation(op: str, arr):
    """The (forward, backward) pair to use for `op` on arrays like `arr`: fast when the switch says
    so and a kernel exists for its device and dtype, else the reference."""
    if _kernel_mode == "fast" and arr.dtype in _FAST_DTYPES:
        impl = fast_table(device_of(arr)).get(op)
        if impl is not None:
            return impl
    return _REFERENCE[op]


def reference(op: str):
    return _REFERENCE[op]


def implementation_kind(impl) -> str:
    """'reference' when ``impl`` (a pair implementation() returned) is a registered reference, else
    'fast'. The profiler and draw_graph report it; nothing on an op's path calls it."""
    return "reference" if any(impl is r for r in _REFERENCE.values()) else "fast"
