"""GELU forward and backward on flat (contiguous 1-D) arrays: exact (erf) and tanh forms.

One loop per form, so the form is not a branch inside the loop (that stops vectorization)."""
import math

import numpy as np
from numba import prange

from ._jit import kernel
from ._math import fexp, ftanh, like, normal_cdf

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@kernel
def gelu_forward(x, tanh_approx):
    y = np.empty_like(x)
    half, one = like(x, 0.5), like(x, 1.0)
    if tanh_approx:
        c, a = like(x, _SQRT_2_OVER_PI), like(x, 0.044715)
        for i in prange(x.size):
            v = x[i]
            y[i] = half * v * (one + ftanh(c * (v + a * v * v * v)))
    else:
        for i in prange(x.size):
            v = x[i]
            y[i] = v * normal_cdf(v)
    return y


@kernel
def gelu_backward(x, g, tanh_approx):
    dx = np.empty_like(x)
    half, one = like(x, 0.5), like(x, 1.0)
    if tanh_approx:
        c, a, a3 = like(x, _SQRT_2_OVER_PI), like(x, 0.044715), like(x, 3 * 0.044715)
        for i in prange(x.size):
            v = x[i]
            t = ftanh(c * (v + a * v * v * v))
            du = c * (one + a3 * v * v)
            dx[i] = g[i] * (half * (one + t) + half * v * (one - t * t) * du)
    else:
        k = like(x, _INV_SQRT_2PI)
        for i in prange(x.size):
            v = x[i]
            dx[i] = g[i] * (normal_cdf(v) + v * fexp(-half * v * v) * k)   # Phi(v) + v phi(v)
    return dx
