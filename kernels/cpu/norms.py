"""LayerNorm and RMSNorm over the last axis of (N, C) rows: forward and backward.

Weight/bias gradients are sums over rows; each parallel task sums its own chunk of rows into
a private row of a partial-sum array, then the chunks are added: no race, no atomics. The
number of chunks is an argument (numba.get_num_threads() inside would stop caching)."""
import math

import numpy as np
from numba import prange

from ._jit import kernel


@kernel
def layer_norm_forward(x, w, b, eps, has_w, has_b):
    """-> y, mean (N,), rstd (N,)."""
    N, C = x.shape
    y = np.empty_like(x)
    mean = np.empty(N, dtype=x.dtype)
    rstd = np.empty(N, dtype=x.dtype)
    for i in prange(N):
        s = 0.0
        for j in range(C):
            s += x[i, j]
        mu = s / C
        v = 0.0
        for j in range(C):
            d = x[i, j] - mu
            v += d * d
        r = 1.0 / math.sqrt(v / C + eps)
        mean[i], rstd[i] = mu, r
        for j in range(C):
            h = (x[i, j] - mu) * r
            if has_w:
                h = h * w[j]
            if has_b:
                h = h + b[j]
            y[i, j] = h
    return y, mean, rstd


@kernel
def layer_norm_backward(g, x, mean, rstd, w, has_w, nthreads):
    """-> dx, dw, db (dw/db are sums over rows of g * xhat and g); rows split in nthreads chunks."""
    N, C = x.shape
    dx = np.empty_like(x)
    nchunks = max(1, min(nthreads, N))
    pw = np.zeros((nchunks, C), dtype=np.float64)
    pb = np.zeros((nchunks, C), dtype=np.float64)
    per = (N + nchunks - 1) // nchunks
    for c in prange(nchunks):
        for i in range(c * per, min(N, (c + 1) * per)):
            mu, r = mean[i], rstd[i]
            sg = 0.0
            sgx = 0.0
            for j in range(C):
                xh = (x[i, j] - mu) * r
                gx = g[i, j] * w[j] if has_w else g[i, j]
                sg += gx
                sgx += gx * xh
                pw[c, j] += g[i, j] * xh
                pb[c, j] += g[i, j]
            sg /= C
            sgx /= C
            for j in range(C):
                xh = (x[i, j] - mu) * r
                gx = g[i, j] * w[j] if has_w else g[i, j]
                dx[i, j] = r * (gx - sg - xh * sgx)
    dw = np.zeros(C, dtype=x.dtype)
    db = np.zeros(C, dtype=x.dtype)
    for j in range(C):
        sw = 0.0
        sb = 0.0
        for c in range(nchunks):
            sw += pw[c, j]
            sb += pb[c, j]
        dw[j] = sw
        db[j] = sb
    return dx, dw, db


@kernel
def rms_norm_forward(x, w, eps, has_w):
    """-> y, rstd (N,)."""
    N, C = x.shape
    y = np.empty_like(x)
    rstd = np.empty(N, dtype=x.dtype)
    for i in prange(N):
        s = 0.0
        for j in range(C):
            s += x[i, j] * x[i, j]
        r = 1.0 / math.sqrt(s / C + eps)
        rstd[i] = r
        for j in range(C):
            y[i, j] = x[i, j] * r * w[j] if has_w else x[i, j] * r
    return y, rstd


@kernel
def rms_norm_backward(g, x, rstd, w, has_w, nthreads):
    """-> dx, dw; rows split in nthreads chunks."""
    N, C = x.shape
    dx = np.empty_like(x)
    nchunks = max(1, min(nthreads, N))
    pw = np.zeros((nchunks, C), dtype=np.float64)
    per = (N + nchunks - 1) // nchunks
    for c in prange(nchunks):
        for i in range(c * per, min(N, (c + 1) * per)):
            r = rstd[i]
            sgx = 0.0
            for j in range(C):
                xh = x[i, j] * r
                gx = g[i, j] * w[j] if has_w else g[i, j]
                sgx += gx * xh
                pw[c, j] += g[i, j] * xh
            sgx /= C
            for j in range(C):
                gx = g[i, j] * w[j] if has_w else g[i, j]
                dx[i, j] = r * (gx - x[i, j] * r * sgx)
    dw = np.zeros(C, dtype=x.dtype)
    for j in range(C):
        s = 0.0
        for c in range(nchunks):
            s += pw[c, j]
        dw[j] = s
    return dx, dw
