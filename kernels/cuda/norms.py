"""LayerNorm and RMSNorm over the last axis of (N, C) rows: forward and backward.

Forward and dx: one block per row (block reductions for the row's mean / variance / dot
products). dw and db are sums over rows, a column reduction: a 2-D block of param_cols columns
x param_lanes row lanes sums param_rows rows into one partial row per block (lanes combined in
shared memory), and the few partial rows are added by the caller (deterministic, no atomics).
has_w / has_b say whether w / b exist (a placeholder array is passed otherwise)."""
import functools
import math

import numpy as np
from numba import cuda

from ._device import block_sum
from ._launch import cdiv, kernel, launch, numba_type, row_threads, tiles


@functools.cache
def build(dtype, max_threads, cols, lanes):
    T = numba_type(dtype)
    t = np.dtype(dtype).type
    ZERO, ONE = t(0), t(1)
    vec, mat = f"{T}[::1]", f"{T}[:, ::1]"

    @kernel(f"void({mat}, {vec}, {vec}, {T}, boolean, boolean, {mat}, {vec}, {vec})")
    def layer_norm_forward(x, w, b, eps, has_w, has_b, y, mean, rstd):
        buf = cuda.shared.array(max_threads, T)
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = x.shape[1]
        Cf = t(C)  # (dividing by the int64 C would promote float32 to float64)
        s = ZERO
        for j in range(tid, C, nt):
            s += x[row, j]
        mu = block_sum(buf, s) / Cf
        v = ZERO
        for j in range(tid, C, nt):  # two passes (not E[x^2] - mu^2, which cancels badly)
            d = x[row, j] - mu
            v += d * d
        r = ONE / math.sqrt(block_sum(buf, v) / Cf + eps)
        if tid == 0:
            mean[row] = mu
            rstd[row] = r
        for j in range(tid, C, nt):
            h = (x[row, j] - mu) * r
            if has_w:
                h = h * w[j]
            if has_b:
                h = h + b[j]
            y[row, j] = h

    @kernel(f"void({mat}, {mat}, {vec}, {vec}, {vec}, boolean, {mat})")
    def layer_norm_backward(g, x, mean, rstd, w, has_w, dx):
        """dx = rstd * (gx - mean(gx) - xhat * mean(gx * xhat)), gx = g * w."""
        buf = cuda.shared.array(max_threads, T)
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = x.shape[1]
        Cf = t(C)  # (dividing by the int64 C would promote float32 to float64)
        mu, r = mean[row], rstd[row]
        sg = ZERO
        sgx = ZERO
        for j in range(tid, C, nt):
            gx = g[row, j] * w[j] if has_w else g[row, j]
            sg += gx
            sgx += gx * ((x[row, j] - mu) * r)
        sg = block_sum(buf, sg) / Cf
        sgx = block_sum(buf, sgx) / Cf
        for j in range(tid, C, nt):
            gx = g[row, j] * w[j] if has_w else g[row, j]
            dx[row, j] = r * (gx - sg - (x[row, j] - mu) * r * sgx)

    @kernel(f"void({mat}, {vec}, {T}, boolean, {mat}, {vec})")
    def rms_norm_forward(x, w, eps, has_w, y, rstd):
        buf = cuda.shared.array(max_threads, T)
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = x.shape[1]
        Cf = t(C)  # (dividing by the int64 C would promote float32 to float64)
        s = ZERO
        for j in range(tid, C, nt):
            s += x[row, j] * x[row, j]
        r = ONE / math.sqrt(block_sum(buf, s) / Cf + eps)
        if tid == 0:
            rstd[row] = r
        for j in range(tid, C, nt):
            y[row, j] = x[row, j] * r * w[j] if has_w else x[row, j] * r

    @kernel(f"void({mat}, {mat}, {vec}, {vec}, boolean, {mat})")
    def rms_norm_backward(g, x, rstd, w, has_w, dx):
        """dx = rstd * (gx - xhat * mean(gx * xhat))."""
        buf = cuda.shared.array(max_threads, T)
        row, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        C = x.shape[1]
        Cf = t(C)  # (dividing by the int64 C would promote float32 to float64)
        r = rstd[row]
        sgx = ZERO
        for j in range(tid, C, nt):
            gx = g[row, j] * w[j] if has_w else g[row, j]
            sgx += gx * (x[row, j] * r)
        sgx = block_sum(buf, sgx) / Cf
        for j in range(tid, C, nt):
            gx = g[row, j] * w[j] if has_w else g[row, j]
            dx[row, j] = r * (gx - x[row, j] * r * sgx)

    @kernel(f"void({mat}, {mat}, {vec}, {vec}, boolean, int64, {mat}, {mat})")
    def param_grads(g, x, mean, rstd, centered, rows_per_block, pw, pb):
        """pw[blk, j] = sum of g * xhat and pb[blk, j] = sum of g over this block's rows, where
        xhat = (x - mean) * rstd (LayerNorm, centered) or x * rstd (RMSNorm)."""
        sw = cuda.shared.array((lanes, cols), T)
        sb = cuda.shared.array((lanes, cols), T)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        j = cuda.blockIdx.x * cols + tx
        blk = cuda.blockIdx.y
        N, C = x.shape
        r0 = blk * rows_per_block
        r1 = min(N, r0 + rows_per_block)
        aw = ZERO
        ab = ZERO
        if j < C:
            for i in range(r0 + ty, r1, lanes):  # lanes interleave rows; threads x read along a row
                xh = (x[i, j] - mean[i]) * rstd[i] if centered else x[i, j] * rstd[i]
                aw += g[i, j] * xh
                ab += g[i, j]
        sw[ty, tx] = aw
        sb[ty, tx] = ab
        cuda.syncthreads()  # every lane's partial is in shared memory before lane 0 adds them up
        if ty == 0 and j < C:
            for k in range(1, lanes):
                aw += sw[k, tx]
                ab += sb[k, tx]
            pw[blk, j] = aw
            pb[blk, j] = ab

    return layer_norm_forward, layer_norm_backward, rms_norm_forward, rms_norm_backward, param_grads


def _kernels(dtype):
    tl = tiles()
    return build(np.dtype(dtype), tl.row_threads, tl.param_cols, tl.param_lanes)


def layer_norm_forward(x, w, b, eps, has_w, has_b, y, mean, rstd):
    launch(_kernels(x.dtype)[0], x.shape[0], row_threads(x.shape[1]), x, w, b, eps, has_w, has_b, y, mean, rstd)


def layer_norm_backward(g, x, mean, rstd, w, has_w, dx):
    launch(_kernels(x.dtype)[1], x.shape[0], row_threads(x.shape[1]), g, x, mean, rstd, w, has_w, dx)


def rms_norm_forward(x, w, eps, has_w, y, rstd):
    launch(_kernels(x.dtype)[2], x.shape[0], row_threads(x.shape[1]), x, w, eps, has_w, y, rstd)


def rms_norm_backward(g, x, rstd, w, has_w, dx):
    launch(_kernels(x.dtype)[3], x.shape[0], row_threads(x.shape[1]), g, x, rstd, w, has_w, dx)


def param_blocks(N: int) -> int:
    """How many partial rows param_grads writes for N rows (the caller allocates them)."""
    return cdiv(N, tiles().param_rows)


def param_grads(g, x, mean, rstd, centered, pw, pb):
    """Fill pw, pb (param_blocks(N), C) with partial column sums; the caller sums axis 0."""
    tl = tiles()
    N, C = x.shape
    launch(_kernels(x.dtype)[4], (cdiv(C, tl.param_cols), param_blocks(N)), (tl.param_cols, tl.param_lanes),
           g, x, mean, rstd, centered, tl.param_rows, pw, pb)
