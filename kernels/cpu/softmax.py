"""Row softmax over the last axis: forward and backward. x, y, g are (N, C) C-contiguous.

Arithmetic in the input dtype (typed constants: a Python float literal would make it float64),
and the exp of a row in a loop of its own, so that it vectorizes (kernels/cpu/_math.py)."""
import math

import numpy as np
from numba import prange

from ._jit import kernel
from ._math import fexp, like


@kernel
def softmax_forward(x):
    N, C = x.shape
    y = np.empty_like(x)
    zero, one, ninf = like(x, 0.0), like(x, 1.0), like(x, -np.inf)
    for i in prange(N):
        m = ninf
        for j in range(C):
            m = max(m, x[i, j])
        if not math.isfinite(m):  # a row of -inf gives zeros (as the reference)
            m = zero
        s = zero
        for j in range(C):
            e = fexp(x[i, j] - m)
            y[i, j] = e
            s += e
        inv = one / s if s > zero else zero
        for j in range(C):
            y[i, j] *= inv
    return y


@kernel
def softmax_backward(y, g):
    N, C = y.shape
    dx = np.empty_like(y)
    zero = like(y, 0.0)
    for i in prange(N):
        dot = zero
        for j in range(C):
            dot += g[i, j] * y[i, j]
        for j in range(C):
            dx[i, j] = y[i, j] * (g[i, j] - dot)
    return dx
