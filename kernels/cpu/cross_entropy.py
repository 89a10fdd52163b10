"""Fused log-softmax + negative log-likelihood per row. logits (N, C), targets (N,) int64."""
import math

import numpy as np
from numba import prange

from ._jit import kernel


@kernel
def cross_entropy_forward(logits, targets, ignore_index):
    """-> (losses (N,), lse (N,)): lse is logsumexp of each row; ignored rows have loss 0."""
    N, C = logits.shape
    losses = np.zeros(N, dtype=logits.dtype)
    lse = np.empty(N, dtype=logits.dtype)
    for i in prange(N):
        m = -np.inf
        for j in range(C):
            m = max(m, logits[i, j])
        if not math.isfinite(m):
            m = 0.0
        s = 0.0
        for j in range(C):
            s += math.exp(logits[i, j] - m)
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
    for i in prange(N):
        t = targets[i]
        if t == ignore_index:
            for j in range(C):
                dx[i, j] = 0.0
            continue
        sc = row_scale[i]
        for j in range(C):
            dx[i, j] = math.exp(logits[i, j] - lse[i]) * sc
        dx[i, t] -= sc
    return dx
