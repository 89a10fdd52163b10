"""Scaled dot-product attention, forward and backward, never storing the (Tq, Tk) matrix.

q (BH, Tq, D), k (BH, Tk, D), v (BH, Tk, Dv), C-contiguous. Causal masking is aligned
bottom-right like the reference (query i sees keys j <= i + Tk - Tq). Each (batch, head) is
one parallel task. The forward keeps one row of scores at a time and saves the logsumexp of
each row; the backward recomputes the probabilities from it (as flash attention does)."""
import math

import numpy as np
from numba import prange

from ._jit import kernel


@kernel
def attention_forward(q, k, v, scale, causal):
    """-> out (BH, Tq, Dv), lse (BH, Tq) (lse is -inf for a query that sees no key)."""
    BH, Tq, D = q.shape
    Tk, Dv = k.shape[1], v.shape[2]
    out = np.empty((BH, Tq, Dv), dtype=q.dtype)
    lse = np.empty((BH, Tq), dtype=q.dtype)
    off = Tk - Tq
    # scalars in the inputs' dtype: Python literals (0.0, -inf) would make every product float64
    zero, one, ninf = np.zeros(1, q.dtype)[0], np.ones(1, q.dtype)[0], np.full(1, -np.inf, q.dtype)[0]
    sc = one * scale
    for bh in prange(BH):
        s = np.empty(Tk, dtype=q.dtype)         # this row's scores, then probabilities
        acc = np.empty(Dv, dtype=q.dtype)
        for i in range(Tq):
            jmax = min(Tk, max(0, i + off + 1)) if causal else Tk
            m = ninf
            for j in range(jmax):
                dot = zero
                for d in range(D):
                    dot += q[bh, i, d] * k[bh, j, d]
                dot *= sc
                s[j] = dot
                m = max(m, dot)
            acc[:] = zero
            if jmax == 0 or not math.isfinite(m):
                out[bh, i, :] = zero
                lse[bh, i] = ninf
                continue
            total = zero
            for j in range(jmax):
                e = math.exp(s[j] - m)
                total += e
                for d in range(Dv):
                    acc[d] += e * v[bh, j, d]
            inv = one / total
            for d in range(Dv):
                out[bh, i, d] = acc[d] * inv
            lse[bh, i] = m + math.log(total)
    return out, lse


@kernel
def attention_backward(q, k, v, out, lse, dout, scale, causal):
    """-> dq, dk, dv. p_ij = exp(s_ij - lse_i); ds_ij = p_ij (dout_i . v_j - dout_i . out_i)."""
    BH, Tq, D = q.shape
    Tk, Dv = k.shape[1], v.shape[2]
    dq = np.zeros_like(q)
    dk = np.zeros_like(k)
    dv = np.zeros_like(v)
    off = Tk - Tq
    zero = np.zeros(1, q.dtype)[0]              # keep the arithmetic in the inputs' dtype
    sc = np.ones(1, q.dtype)[0] * scale
    for bh in prange(BH):
        for i in range(Tq):
            jmax = min(Tk, max(0, i + off + 1)) if causal else Tk
            li = lse[bh, i]
            if jmax == 0 or not math.isfinite(li):
                continue
            di = zero
            for d in range(Dv):
                di += dout[bh, i, d] * out[bh, i, d]
            for j in range(jmax):
                dot = zero
                for d in range(D):
                    dot += q[bh, i, d] * k[bh, j, d]
                p = math.exp(dot * sc - li)
                dp = zero
                for d in range(Dv):
                    dp += dout[bh, i, d] * v[bh, j, d]
                    dv[bh, j, d] += p * dout[bh, i, d]
                ds = p * (dp - di) * sc
                for d in range(D):
                    dq[bh, i, d] += ds * k[bh, j, d]
                    dk[bh, j, d] += ds * q[bh, i, d]
    return dq, dk, dv
