"""Scaled dot-product attention, forward and backward, never storing the (Tq, Tk) matrix.

q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv), any strides (views of a fused qkv
projection and broadcast GQA heads are read in place). Causal masking is aligned bottom-right
like the reference (query i sees keys j <= i + Tk - Tq). Each (batch, head) is one parallel
task. The forward keeps one row of scores at a time and saves the logsumexp of each row; the
backward recomputes the probabilities from it (as flash attention does).

Layout, for speed: each task first copies its head into small contiguous buffers, keys and
values transposed to (D, Tk), so that every inner loop runs over contiguous memory with no
loop-carried dependence (a row of scores is D axpy's over keys; LLVM vectorizes all of them).
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
        kT = np.empty((D, Tk), dtype=q.dtype)                      # keys, transposed
        vh = np.empty((Tk, Dv), dtype=q.dtype)
        for j in range(Tk):
            for d in range(D):
                kT[d, j] = k[b, h, j, d]
            for d in range(Dv):
                vh[j, d] = v[b, h, j, d]
        s = np.empty(Tk, dtype=q.dtype)                            # this row's scores, then exp
        acc = np.empty(Dv, dtype=q.dtype)
        for i in range(Tq):
            jmax = min(Tk, max(0, i + off + 1)) if causal else Tk
            if jmax == 0:
                out[b, i, h, :] = zero
                lse[b, h, i] = ninf
                continue
            s[:jmax] = zero
            for d in range(D):
                qd = q[b, h, i, d] * sc
                for j in range(jmax):
                    s[j] += qd * kT[d, j]
            m = ninf
            for j in range(jmax):
                m = max(m, s[j])
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
        kT = np.empty((D, Tk), dtype=q.dtype)
        kh = np.empty((Tk, D), dtype=q.dtype)
        vT = np.empty((Dv, Tk), dtype=q.dtype)
        for j in range(Tk):
            for d in range(D):
                kT[d, j] = k[b, h, j, d]
                kh[j, d] = k[b, h, j, d]
            for d in range(Dv):
                vT[d, j] = v[b, h, j, d]
        dkh = np.zeros((Tk, D), dtype=q.dtype)                    # sums over query rows
        dvh = np.zeros((Tk, Dv), dtype=q.dtype)
        qs = np.empty(D, dtype=q.dtype)                            # scale * q_i
        go = np.empty(Dv, dtype=q.dtype)                           # dout_i
        dqi = np.empty(D, dtype=q.dtype)
        p = np.empty(Tk, dtype=q.dtype)
        dp = np.empty(Tk, dtype=q.dtype)
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
            p[:jmax] = zero
            dp[:jmax] = zero
            for d in range(D):
                qd = qs[d]
                for j in range(jmax):
                    p[j] += qd * kT[d, j]
            for d in range(Dv):
                gd = go[d]
                for j in range(jmax):
                    dp[j] += gd * vT[d, j]
            for j in range(jmax):
                pj = fexp(p[j] - li)
                p[j] = pj
                dp[j] = pj * (dp[j] - di)                           # ds_ij / scale
            dqi[:] = zero
            for j in range(jmax):
                pj, dsj = p[j], dp[j]
                for d in range(Dv):
                    dvh[j, d] += pj * go[d]
                for d in range(D):
                    dqi[d] += dsj * kh[j, d]
                    dkh[j, d] += dsj * qs[d]
            for d in range(D):
                dq[b, i, h, d] = dqi[d] * sc
        for j in range(Tk):
            dk[b, j, h, :] = dkh[j]
            dv[b, j, h, :] = dvh[j]
    return dq.transpose(0, 2, 1, 3), dk.transpose(0, 2, 1, 3), dv.transpose(0, 2, 1, 3)
