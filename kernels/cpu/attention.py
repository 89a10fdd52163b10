"""Scaled dot-product attention, forward and backward, never storing the (Tq, Tk) matrix.

q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv), any strides (views of a fused qkv
projection and broadcast GQA heads are read in place). Causal masking is aligned bottom-right
like the reference (query i sees keys j <= i + Tk - Tq). Each (batch, head) is one parallel
task. The forward keeps one row of scores at a time and saves the logsumexp of each row; the
backward recomputes the probabilities from it (as flash attention does).

Loops, for speed: each task first copies its head into small contiguous buffers. Scores and
dout . v are dot products over the contiguous head dimension (vectorized sums; measured 1.6-3.3x
faster than building a score row from D axpy's over keys, which makes short loops over causal
rows), and the other products are axpy's over the head dimension.
Outputs and gradients are written in (B, T, H, D) order and returned as (B, H, T, D)
transposed views: the attention module's following transpose + reshape to (B, T, C) is then
free instead of a copy."""
import math

import numpy as np
from numba import prange

from ._jit import kernel
from ._math import fexp, like


@kernel
def attention_forward(q, k, v, scale, causal):
    """-> out (B, H, Tq, Dv) (a view of a (B, Tq, H, Dv) array), lse (B, H, Tq) (-inf for a
    query that sees no key)."""
    B, H, Tq, D = q.shape
    Tk, Dv = k.shape[2], v.shape[3]
    out = np.empty((B, Tq, H, Dv), dtype=q.dtype)
    lse = np.empty((B, H, Tq), dtype=q.dtype)
    off = Tk - Tq
    zero, one, ninf = like(q, 0.0), like(q, 1.0), like(q, -np.inf)
    sc = like(q, scale)
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        kh = np.empty((Tk, D), dtype=q.dtype)
        vh = np.empty((Tk, Dv), dtype=q.dtype)
        kh[:, :] = k[b, h]
        vh[:, :] = v[b, h]
        qi = np.empty(D, dtype=q.dtype)                             # scale * q_i
        s = np.empty(Tk, dtype=q.dtype)                            # this row's scores, then exp
        acc = np.empty(Dv, dtype=q.dtype)
        for i in range(Tq):
            jmax = min(Tk, max(0, i + off + 1)) if causal else Tk
            if jmax == 0:
                out[b, i, h, :] = zero
                lse[b, h, i] = ninf
                continue
            for d in range(D):
                qi[d] = q[b, h, i, d] * sc
            m = ninf
            for j in range(jmax):
                dot = zero
                for d in range(D):
                    dot += qi[d] * kh[j, d]
                s[j] = dot
                m = max(m, dot)
            if not math.isfinite(m):       # infinite inputs: a row the reference also zeroes
                out[b, i, h, :] = zero
                lse[b, h, i] = ninf
                continue
            total = zero
            for j in range(jmax):
                e = fexp(s[j] - m)
                s[j] = e
                total += e
            acc[:] = zero
            for j in range(jmax):
                e = s[j]
                for d in range(Dv):
                    acc[d] += e * vh[j, d]
            inv = one / total
            for d in range(Dv):
                out[b, i, h, d] = acc[d] * inv
            lse[b, h, i] = m + math.log(total)
    return out.transpose(0, 2, 1, 3), lse


@kernel
def attention_backward(q, k, v, out, lse, dout, scale, causal):
    """-> dq, dk, dv as (B, H, T, D) views of (B, T, H, D) arrays.

    p_ij = exp(s_ij - lse_i); ds_ij = p_ij (dout_i . v_j - dout_i . out_i)."""
    B, H, Tq, D = q.shape
    Tk, Dv = k.shape[2], v.shape[3]
    dq = np.empty((B, Tq, H, D), dtype=q.dtype)
    dk = np.empty((B, Tk, H, D), dtype=q.dtype)
    dv = np.empty((B, Tk, H, Dv), dtype=q.dtype)
    off = Tk - Tq
    zero = like(q, 0.0)
    sc = like(q, scale)
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        kh = np.empty((Tk, D), dtype=q.dtype)
        vh = np.empty((Tk, Dv), dtype=q.dtype)
        kh[:, :] = k[b, h]
        vh[:, :] = v[b, h]
        dkh = np.zeros((Tk, D), dtype=q.dtype)                    # sums over query rows
        dvh = np.zeros((Tk, Dv), dtype=q.dtype)
        qs = np.empty(D, dtype=q.dtype)                            # scale * q_i
        go = np.empty(Dv, dtype=q.dtype)                           # dout_i
        dqi = np.empty(D, dtype=q.dtype)
        p = np.empty(Tk, dtype=q.dtype)                            # scores, then probabilities
        ds = np.empty(Tk, dtype=q.dtype)                           # dout_i . v_j, then ds_ij
        for i in range(Tq):
            jmax = min(Tk, max(0, i + off + 1)) if causal else Tk
            li = lse[b, h, i]
            if jmax == 0 or not math.isfinite(li):
                dq[b, i, h, :] = zero
                continue
            di = zero
            for d in range(Dv):
                go[d] = dout[b, h, i, d]
                di += go[d] * out[b, h, i, d]
            for d in range(D):
                qs[d] = q[b, h, i, d] * sc
            for j in range(jmax):
                sj = zero
                for d in range(D):
                    sj += qs[d] * kh[j, d]
                dpj = zero
                for d in range(Dv):
                    dpj += go[d] * vh[j, d]
                p[j], ds[j] = sj, dpj
            for j in range(jmax):                                  # a loop of its own: vectorized exp
                pj = fexp(p[j] - li)
                p[j] = pj
                ds[j] = pj * (ds[j] - di)                           # ds_ij / scale
            dqi[:] = zero
            for j in range(jmax):
                pj, dsj = p[j], ds[j]
                for d in range(Dv):
                    dvh[j, d] += pj * go[d]
                for d in range(D):
                    dqi[d] += dsj * kh[j, d]
                for d in range(D):
                    dkh[j, d] += dsj * qs[d]
            for d in range(D):
                dq[b, i, h, d] = dqi[d] * sc
        dk[b, :, h, :] = dkh
        dv[b, :, h, :] = dvh
    return dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)
