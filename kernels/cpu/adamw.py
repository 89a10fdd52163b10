"""Fused AdamW step, in place on flat parameter, gradient and moment arrays (torch's update)."""
import math

from numba import prange

from ._jit import kernel


@kernel
def adamw_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias_c1, bias_c2):
    """p -= lr*wd*p; m, v <- moments; p -= lr/bias_c1 * m / (sqrt(v/bias_c2) + eps)."""
    decay = 1.0 - lr * weight_decay
    step = lr / bias_c1
    inv_sqrt_c2 = 1.0 / math.sqrt(bias_c2)
    for i in prange(p.size):
        gi = g[i]
        mi = beta1 * m[i] + (1.0 - beta1) * gi
        vi = beta2 * v[i] + (1.0 - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step * mi / (math.sqrt(vi) * inv_sqrt_c2 + eps)
