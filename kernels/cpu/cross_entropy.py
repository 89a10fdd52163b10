"""Fused log-softmax + negative log-likelihood per row. logits (N, C), targets (N,) int64.

Arithmetic in the logits' dtype and a vectorizable exp (kernels/cpu/_math.py), as softmax.py."""
import math

import numpy as np
from numba import prange

from ._jit import kernel
from ._math import fexp, like


@kernel
def cross_entropy_forward(logits, targets, ignore_index):
    """-> (losses (N,), lse (N,)): lse is logsumexp of each row; ignored rows have loss 0."""
    N, C = logits.shape
    losses = np.zeros(N, dtype=logits.dtype)
    lse = np.empty(N, dtype=logits.dtype)
    zero, ninf = like(logits, 0.0), like(logits, -np.inf)
    for i in prange(N):
        m = ninf
        for j in range(C):
            m = max(m, logits[i, j])
        if not math.isfinite(m):
            m = zero
        s = zero
        for j in range(C):
            s += fexp(logits[i, j] - m)
        lse[i] = m + math.log(s)
        t = targets[i]
        if t != ignore_index:
            losses[i] = lse[i] - logits[i, t]
    return losses, lse


@kernel
def cross_entropy_backward(logits, lse, targets, ignore_index, row_scale):
    """d loss / d logits = (softmax - onehot(target)) * row_scale[i], zero for ignored rows."""
    N, C = logits.shape
    dx = np.empty_like(logits)
    zero = like(logits, 0.0)
    for i in prange(N):
        t = targets[i]
        if t == ignore_index:
            for j in range(C):
                dx[i, j] = zero
            continue
        sc = row_scale[i]
        li = lse[i]
        for j in range(C):
            dx[i, j] = fexp(logits[i, j] - li) * sc
        dx[i, t] -= sc
    return dx
