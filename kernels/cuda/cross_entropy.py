"""Fused log-softmax + negative log-likelihood per row. logits (N, C), targets (N,) int64.

One block per row, as softmax.py: a block max, then a block sum of exp(z - max) give the
row's logsumexp; its loss is lse - z[target]. The backward writes (softmax - onehot) * scale
without ever storing the probabilities. A target outside [0, C) that is not ignore_index gives
a NaN loss (the reference raises or wraps around; a kernel must not read out of bounds)."""
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
    ZERO, ONE, NEG_INF, NAN = t(0), t(1), t(-np.inf), t(np.nan)

    @kernel(f"void({T}[:, ::1], int64[::1], int64, {T}[::1], {T}[::1])")
    def ce_forward(z, targets, ignore_index, losses, lse):
        buf = cuda.shared.array(max_threads, T)
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = z.shape[1]
        m = NEG_INF
        for j in range(tid, C, nt):
            m = max(m, z[row, j])
        m = block_max(buf, m)
        if not math.isfinite(m):
            m = ZERO
        s = ZERO
        for j in range(tid, C, nt):
            s += math.exp(z[row, j] - m)
        s = block_sum(buf, s)
        if tid == 0:
            l = m + math.log(s)
            lse[row] = l
            tg = targets[row]
            if tg == ignore_index:
                losses[row] = ZERO
            elif 0 <= tg < C:
                losses[row] = l - z[row, tg]
            else:
                losses[row] = NAN

    @kernel(f"void({T}[:, ::1], {T}[::1], int64[::1], int64, {T}[::1], {T}[:, ::1])")
    def ce_backward(z, lse, targets, ignore_index, row_scale, dz):
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = z.shape[1]
        tg = targets[row]
        if tg == ignore_index:
            for j in range(tid, C, nt):
                dz[row, j] = ZERO
            return
        sc, l = row_scale[row], lse[row]
        for j in range(tid, C, nt):
            p = math.exp(z[row, j] - l)
            dz[row, j] = (p - ONE if j == tg else p) * sc

    return ce_forward, ce_backward


def _kernels(dtype):
    return build(np.dtype(dtype), tiles().row_threads)


def forward(z, targets, ignore_index, losses, lse):
    launch(_kernels(z.dtype)[0], z.shape[0], row_threads(z.shape[1]), z, targets, ignore_index, losses, lse)


def backward(z, lse, targets, ignore_index, row_scale, dz):
    launch(_kernels(z.dtype)[1], z.shape[0], row_threads(z.shape[1]), z, lse, targets, ignore_index, row_scale, dz)
