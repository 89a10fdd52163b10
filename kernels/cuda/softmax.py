"""Row softmax over the last axis, forward and backward. x, y, g are (N, C) C-contiguous.

One block per row; its threads stride over the columns (coalesced: neighbouring threads read
neighbouring elements) and combine their partials with block reductions in shared memory."""
import functools
import math

import numpy as np
from numba import cuda

from ._device import block_max, block_sum
from ._launch import kernel, launch, numba_type, row_threads, tiles


@functools.cache
def build(dtype, max_threads):
    T = numba_type(dtype)
    t = np.dtype(dtype).type
    ZERO, ONE, NEG_INF = t(0), t(1), t(-np.inf)
    rows2 = f"void({T}[:, ::1], {T}[:, ::1])"

    @kernel(rows2)
    def softmax_forward(x, y):
        buf = cuda.shared.array(max_threads, T)
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = x.shape[1]
        m = NEG_INF
        for j in range(tid, C, nt):
            m = max(m, x[row, j])
        m = block_max(buf, m)
        if not math.isfinite(m):  # a row of -inf gives zeros, as the reference
            m = ZERO
        s = ZERO
        for j in range(tid, C, nt):
            e = math.exp(x[row, j] - m)
            y[row, j] = e
            s += e
        s = block_sum(buf, s)
        inv = ONE / s if s > ZERO else ZERO
        for j in range(tid, C, nt):  # each thread rescales only what it wrote itself: no sync
            y[row, j] *= inv

    @kernel(f"void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1])")
    def softmax_backward(y, g, dx):  # dx = y * (g - sum(g * y))
        buf = cuda.shared.array(max_threads, T)
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = y.shape[1]
        dot = ZERO
        for j in range(tid, C, nt):
            dot += g[row, j] * y[row, j]
        dot = block_sum(buf, dot)
        for j in range(tid, C, nt):
            dx[row, j] = y[row, j] * (g[row, j] - dot)

    return softmax_forward, softmax_backward


def _kernels(dtype):
    return build(np.dtype(dtype), tiles().row_threads)


def forward(x, y):
    """y = softmax(x) row-wise; x, y (N, C)."""
    launch(_kernels(x.dtype)[0], x.shape[0], row_threads(x.shape[1]), x, y)


def backward(y, g, dx):
    launch(_kernels(y.dtype)[1], y.shape[0], row_threads(y.shape[1]), y, g, dx)
