"""How CUDA kernels are built and launched: tile sizes, launch shapes, zero-copy CuPy arguments.

Every kernel family is built by a cached factory ``build(dtype, ...)``: the float type, the
constants and the shared-memory tile sizes are compile-time values of the closure, so a float32
kernel does float32 arithmetic only (a Python float literal would silently make it float64).
Kernels compile lazily, on first launch, for the argument types they get.

Tile sizes come from :func:`tiles`: the GPU sizes, or much smaller ones under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``), which runs every thread as a Python thread, so tests cover several
blocks and ragged edges with small arrays. :func:`use_tiles` changes them (tests run the GPU sizes
too).

Launches: CuPy arrays go to the kernel as numba views of the same device memory (no copy, no host
sync) on CuPy's current stream, so kernels and CuPy ops stay ordered. Under the simulator the
adapters pass NumPy arrays, which the simulator accepts as they are.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numba
import numpy as np
from numba import cuda

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


@dataclasses.dataclass(frozen=True)
class Tiles:
    row_threads: int = 256           # most threads of a one-block-per-row kernel (a power of 2)
    elementwise_threads: int = 256   # threads per block of the grid-stride elementwise kernels
    param_cols: int = 32             # dw/db column sums: columns per block (one per thread x) ...
    param_lanes: int = 8             # ... and row lanes (threads y) adding up rows ...
    param_rows: int = 128            # ... over this many rows per block
    attn_m: int = 64                 # flash attention: queries per block (one thread each) ...
    attn_n: int = 64                 # ... keys per shared-memory tile (halved until it fits)
    attn_smem: int = 40 * 1024       # shared-memory bytes a flash-attention block may use
    mm_bm: int = 64                  # tiled matmul: block tile BM x BN of C, K step BK, ...
    mm_bn: int = 64
    mm_bk: int = 16
    mm_tm: int = 4                   # ... each thread computes TM x TN outputs
    mm_tn: int = 4


GPU_TILES = Tiles()
SIMULATOR_TILES = Tiles(row_threads=16, elementwise_threads=32, param_cols=8, param_lanes=4, param_rows=6,
                        attn_m=8, attn_n=8, attn_smem=40 * 1024, mm_bm=8, mm_bn=8, mm_bk=4, mm_tm=2, mm_tn=2)
_tiles = SIMULATOR_TILES if SIMULATOR else GPU_TILES

MAX_HEAD_DIM = 256  # flash attention keeps a head's row in per-thread local arrays; larger -> reference


def tiles() -> Tiles:
    return _tiles


@contextlib.contextmanager
def use_tiles(t: Tiles):
    """Launch with these tile sizes inside the block (tests: the GPU sizes under the simulator)."""
    global _tiles
    previous, _tiles = _tiles, t
    try:
        yield t
    finally:
        _tiles = previous


# ---- launch shapes ---------------------------------------------------------------------------

def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def row_threads(C: int) -> int:
    """Threads for one block per row of C columns: a power of 2 (the tree reductions need it),
    at least a warp on a GPU, at most tiles().row_threads (then threads stride over columns)."""
    return min(tiles().row_threads, next_pow2(max(C, 32)))


def elementwise_grid(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over n elements."""
    threads = tiles().elementwise_threads
    return min(cdiv(n, threads), 65535), threads


# ---- kernels and their signatures ------------------------------------------------------------

KERNELS: list = []  # (name, dispatcher, signature) of every kernel built so far (for the PTX test)


def kernel(signature: str):
    """``cuda.jit`` (lazy), remembering the kernel's argument types: tests/test_cuda_ptx.py
    compiles every built kernel with them for sm_80/sm_90 without a GPU."""
    def wrap(fn):
        dispatcher = cuda.jit(fn)
        KERNELS.append((f"{fn.__module__}.{fn.__qualname__}", dispatcher, signature))
        return dispatcher
    return wrap


def numba_type(dtype) -> str:
    """'float32' or 'float64': the numba name of a float dtype, for signatures and shared arrays."""
    return str(numba.from_dtype(np.dtype(dtype)))


# ---- launching on CuPy arrays ----------------------------------------------------------------

_streams: dict = {}


def _current_stream():
    """CuPy's current stream as a numba stream (its null stream is the legacy default stream)."""
    import cupy
    ptr = cupy.cuda.get_current_stream().ptr
    if ptr not in _streams:
        _streams[ptr] = cuda.default_stream() if ptr == 0 else cuda.external_stream(ptr)
    return _streams[ptr]


def launch(kern, grid, block, *args) -> None:
    """``kern[grid, block](*args)``; nothing to do when the grid is empty.

    Device arrays (CuPy, anything with ``__cuda_array_interface__``) are wrapped without a sync:
    numba would otherwise synchronize the stream each array was exported on at every launch.
    Ordering comes from launching on CuPy's current stream instead."""
    grid = grid if isinstance(grid, tuple) else (grid,)
    if min(grid) <= 0:
        return
    if any(hasattr(a, "__cuda_array_interface__") for a in args):
        args = tuple(cuda.as_cuda_array(a, sync=False) if hasattr(a, "__cuda_array_interface__") else a
                     for a in args)
        kern[grid, block, _current_stream()](*args)
    else:  # NumPy arrays: the simulator (on a real GPU numba would copy them there and back)
        kern[grid, block](*args)
