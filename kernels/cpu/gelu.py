"""GELU forward and backward on flat (contiguous 1-D) arrays: exact (erf) and tanh forms."""
import math

import numpy as np
from numba import prange

from ._jit import kernel

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


@kernel
def gelu_forward(x, tanh_approx):
    y = np.empty_like(x)
    for i in prange(x.size):
        v = x[i]
        if tanh_approx:
            y[i] = 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
        else:
            y[i] = v * 0.5 * (1.0 + math.erf(v * _INV_SQRT_2))
    return y


@kernel
def gelu_backward(x, g, tanh_approx):
    dx = np.empty_like(x)
    for i in prange(x.size):
        v = x[i]
        if tanh_approx:
            t = math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v))
            du = _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
            dx[i] = g[i] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du)
        else:
            cdf = 0.5 * (1.0 + math.erf(v * _INV_SQRT_2))
            dx[i] = g[i] * (cdf + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI)
    return dx
