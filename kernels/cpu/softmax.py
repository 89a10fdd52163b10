"""Row softmax over the last axis: forward and backward. x, y, g are (N, C) C-contiguous."""
import math

import numpy as np
from numba import prange

from ._jit import kernel


@kernel
def softmax_forward(x):
    N, C = x.shape
    y = np.empty_like(x)
    for i in prange(N):
        m = -np.inf
        for j in range(C):
            m = max(m, x[i, j])
        if not math.isfinite(m):  # a row of -inf gives zeros (as the reference)
            m = 0.0
        s = 0.0
        for j in range(C):
            e = math.exp(x[i, j] - m)
            y[i, j] = e
            s += e
        inv = 1.0 / s if s > 0 else 0.0
        for j in range(C):
            y[i, j] *= inv
    return y


@kernel
def softmax_backward(y, g):
    N, C = y.shape
    dx = np.empty_like(y)
    for i in prange(N):
        dot = 0.0
        for j in range(C):
            dot += g[i, j] * y[i, j]
        for j in range(C):
            dx[i, j] = y[i, j] * (g[i, j] - dot)
    return dx
