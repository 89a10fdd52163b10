"""Flash attention, forward and backward: softmax(q k^T * scale [causal]) v without ever storing
the (Tq, Tk) matrix in global memory.

q (BH, Tq, D), k (BH, Tk, D), v (BH, Tk, Dv), C-contiguous. Causal masking is aligned
bottom-right like the reference: query i sees keys j <= i + Tk - Tq.

Forward (grid: one block per (batch*head, tile of BM queries); one thread per query row):
the block walks the keys in tiles of BN rows that its threads load together into shared
memory. Each thread scores its query against the tile, then folds the tile into its running
output with the online softmax: keep the running max m and sum l of exp(s - m); when the max
grows to m', rescale what was accumulated by exp(m - m'). At the end out = acc / l and the
row's logsumexp lse = m + log(l) is saved: the backward recomputes every probability from it,
p_ij = exp(s_ij - lse_i), instead of storing them. Causal blocks stop at the last key their
last query sees (tiles above the diagonal are never loaded).

Backward, with Delta_i = dout_i . out_i (= sum_j p_ij dp_ij) and dp_ij = dout_i . v_j:
    ds_ij = p_ij (dp_ij - Delta_i) * scale,  dq_i = sum_j ds_ij k_j,
    dk_j = sum_i ds_ij q_i,  dv_j = sum_i p_ij dout_i.
Two kernels, each owning its outputs so no atomics are needed: one thread per query row for dq
(key tiles in shared memory, like the forward), one thread per key row for dk and dv (tiles of
queries, dout, lse and Delta in shared memory). The scores are recomputed in both, FLOPs traded
for determinism and simplicity.

The head dims D and Dv are compile-time constants (one build per head size), so each thread's
q / accumulator rows are fixed-size local arrays that the compiler can keep in registers.
These kernels use CUDA cores, not tensor cores: they teach the algorithm and keep memory
linear in T; cuBLAS/cuDNN-based SDPA is faster.
"""
import functools
import math

import numpy as np
from numba import cuda

from ._launch import cdiv, kernel, launch, numba_type, tiles


def attn_tiles(D: int, Dv: int, itemsize: int) -> tuple[int, int]:
    """(BM, BN): queries per block (= threads of the forward and dq kernels) and keys per tile
    (= threads of the dk/dv kernel), from tiles().attn_m / attn_n, each halved until the
    kernel's shared arrays (a (tile, D) and a (tile, Dv) array, two (tile,) vectors) fit in
    tiles().attn_smem (the static shared-memory limit of a block is 48 KiB)."""
    def fit(n):
        while n > 1 and n * (D + Dv + 2) * itemsize > tiles().attn_smem:
            n //= 2
        return n
    return fit(tiles().attn_m), fit(tiles().attn_n)


@functools.cache
def build(dtype, D, Dv, BM, BN):
    T = numba_type(dtype)
    t = np.dtype(dtype).type
    ZERO, ONE, NEG_INF = t(0), t(1), t(-np.inf)
    arr3, arr2 = f"{T}[:, :, ::1]", f"{T}[:, ::1]"

    @kernel(f"void({arr3}, {arr3}, {arr3}, {T}, boolean, {arr3}, {arr2})")
    def flash_forward(q, k, v, scale, causal, out, lse):
        bh, tid = cuda.blockIdx.x, cuda.threadIdx.x
        Tq, Tk = q.shape[1], k.shape[1]
        off = Tk - Tq
        i = cuda.blockIdx.y * BM + tid                    # this thread's query row
        ks = cuda.shared.array((BN, D), T)
        vs = cuda.shared.array((BN, Dv), T)
        qi = cuda.local.array(D, T)
        acc = cuda.local.array(Dv, T)
        s = cuda.local.array(BN, T)
        active = i < Tq
        if active:
            for d in range(D):
                qi[d] = q[bh, i, d]
        for d in range(Dv):
            acc[d] = ZERO
        m, l = NEG_INF, ZERO
        last = min(Tq, (cuda.blockIdx.y + 1) * BM) - 1    # the block's last query row
        kend = min(Tk, last + off + 1) if causal else Tk  # keys any row of this block sees
        mine = min(Tk, i + off + 1) if causal else Tk     # keys this row sees: [0, mine)
        for k0 in range(0, kend, BN):
            # Every thread, active or not, helps load the tile and reaches both syncthreads.
            for e in range(tid, BN * D, BM):
                r, c = e // D, e % D
                ks[r, c] = k[bh, k0 + r, c] if k0 + r < Tk else ZERO
            for e in range(tid, BN * Dv, BM):
                r, c = e // Dv, e % Dv
                vs[r, c] = v[bh, k0 + r, c] if k0 + r < Tk else ZERO
            cuda.syncthreads()  # the whole K/V tile is in shared memory before any thread reads it
            n = min(BN, mine - k0) if active else 0      # keys of this tile this row sees
            mt = NEG_INF
            for jj in range(n):
                dot = ZERO
                for d in range(D):
                    dot += qi[d] * ks[jj, d]
                dot *= scale
                s[jj] = dot
                mt = max(mt, dot)
            if mt > NEG_INF:
                m_new = max(m, mt)
                alpha = math.exp(m - m_new)               # 0 on the first tile (m = -inf)
                l *= alpha
                for d in range(Dv):
                    acc[d] *= alpha
                for jj in range(n):
                    p = math.exp(s[jj] - m_new)
                    l += p
                    for d in range(Dv):
                        acc[d] += p * vs[jj, d]
                m = m_new
            cuda.syncthreads()  # every thread is done reading this tile before the next load overwrites it
        if active:
            if l > ZERO:
                inv = ONE / l
                for d in range(Dv):
                    out[bh, i, d] = acc[d] * inv
                lse[bh, i] = m + math.log(l)
            else:  # a query that sees no key: zeros, lse = -inf (as the reference)
                for d in range(Dv):
                    out[bh, i, d] = ZERO
                lse[bh, i] = NEG_INF

    @kernel(f"void({arr3}, {arr3}, {arr2})")
    def row_dot(dout, out, delta):
        """delta[bh, i] = dout[bh, i] . out[bh, i]; one thread per row, grid-stride."""
        Tq = out.shape[1]
        for r in range(cuda.grid(1), out.shape[0] * Tq, cuda.gridsize(1)):
            bh, i = r // Tq, r % Tq
            acc = ZERO
            for d in range(Dv):
                acc += dout[bh, i, d] * out[bh, i, d]
            delta[bh, i] = acc

    @kernel(f"void({arr3}, {arr3}, {arr3}, {arr2}, {arr2}, {arr3}, {T}, boolean, {arr3})")
    def flash_backward_dq(q, k, v, lse, delta, dout, scale, causal, dq):
        bh, tid = cuda.blockIdx.x, cuda.threadIdx.x
        Tq, Tk = q.shape[1], k.shape[1]
        off = Tk - Tq
        i = cuda.blockIdx.y * BM + tid
        ks = cuda.shared.array((BN, D), T)
        vs = cuda.shared.array((BN, Dv), T)
        qi = cuda.local.array(D, T)
        doi = cuda.local.array(Dv, T)
        dqi = cuda.local.array(D, T)
        li, di = NEG_INF, ZERO
        if i < Tq:
            li, di = lse[bh, i], delta[bh, i]
            for d in range(D):
                qi[d] = q[bh, i, d]
            for d in range(Dv):
                doi[d] = dout[bh, i, d]
        for d in range(D):
            dqi[d] = ZERO
        active = i < Tq and li > NEG_INF                  # a row that saw no key has no gradient
        last = min(Tq, (cuda.blockIdx.y + 1) * BM) - 1
        kend = min(Tk, last + off + 1) if causal else Tk
        mine = min(Tk, i + off + 1) if causal else Tk
        for k0 in range(0, kend, BN):
            for e in range(tid, BN * D, BM):
                r, c = e // D, e % D
                ks[r, c] = k[bh, k0 + r, c] if k0 + r < Tk else ZERO
            for e in range(tid, BN * Dv, BM):
                r, c = e // Dv, e % Dv
                vs[r, c] = v[bh, k0 + r, c] if k0 + r < Tk else ZERO
            cuda.syncthreads()  # the whole K/V tile is in shared memory before any thread reads it
            n = min(BN, mine - k0) if active else 0
            for jj in range(n):
                sdot = ZERO
                for d in range(D):
                    sdot += qi[d] * ks[jj, d]
                p = math.exp(sdot * scale - li)
                dp = ZERO
                for d in range(Dv):
                    dp += doi[d] * vs[jj, d]
                ds = p * (dp - di) * scale
                for d in range(D):
                    dqi[d] += ds * ks[jj, d]
            cuda.syncthreads()  # every thread is done reading this tile before the next load overwrites it
        if i < Tq:
            for d in range(D):
                dq[bh, i, d] = dqi[d]

    @kernel(f"void({arr3}, {arr3}, {arr3}, {arr2}, {arr2}, {arr3}, {T}, boolean, {arr3}, {arr3})")
    def flash_backward_dkv(q, k, v, lse, delta, dout, scale, causal, dk, dv):
        # Here a block owns BN keys (one thread each) and walks the queries in tiles of BM.
        bh, tid = cuda.blockIdx.x, cuda.threadIdx.x
        Tq, Tk = q.shape[1], k.shape[1]
        off = Tk - Tq
        j = cuda.blockIdx.y * BN + tid                    # this thread's key row
        qs = cuda.shared.array((BM, D), T)
        dos = cuda.shared.array((BM, Dv), T)
        ls = cuda.shared.array(BM, T)
        dls = cuda.shared.array(BM, T)
        kj = cuda.local.array(D, T)
        vj = cuda.local.array(Dv, T)
        dkj = cuda.local.array(D, T)
        dvj = cuda.local.array(Dv, T)
        active = j < Tk
        if active:
            for d in range(D):
                kj[d] = k[bh, j, d]
            for d in range(Dv):
                vj[d] = v[bh, j, d]
        for d in range(D):
            dkj[d] = ZERO
        for d in range(Dv):
            dvj[d] = ZERO
        # The first query that sees this block's first key is j0 - off; start at its tile.
        qbegin = (max(0, cuda.blockIdx.y * BN - off) // BM) * BM if causal else 0
        for q0 in range(qbegin, Tq, BM):
            for e in range(tid, BM * D, BN):
                r, c = e // D, e % D
                qs[r, c] = q[bh, q0 + r, c] if q0 + r < Tq else ZERO
            for e in range(tid, BM * Dv, BN):
                r, c = e // Dv, e % Dv
                dos[r, c] = dout[bh, q0 + r, c] if q0 + r < Tq else ZERO
            for r in range(tid, BM, BN):
                ls[r] = lse[bh, q0 + r] if q0 + r < Tq else NEG_INF
                dls[r] = delta[bh, q0 + r] if q0 + r < Tq else ZERO
            cuda.syncthreads()  # the whole Q/dout/lse/Delta tile is in shared memory before anyone reads it
            if active:
                for ii in range(min(BM, Tq - q0)):
                    li = ls[ii]
                    if (causal and j > q0 + ii + off) or not li > NEG_INF:
                        continue                          # masked, or a query that saw no key
                    sdot = ZERO
                    for d in range(D):
                        sdot += qs[ii, d] * kj[d]
                    p = math.exp(sdot * scale - li)
                    dp = ZERO
                    for d in range(Dv):
                        dp += dos[ii, d] * vj[d]
                        dvj[d] += p * dos[ii, d]
                    ds = p * (dp - dls[ii]) * scale
                    for d in range(D):
                        dkj[d] += ds * qs[ii, d]
            cuda.syncthreads()  # every thread is done reading this tile before the next load overwrites it
        if active:
            for d in range(D):
                dk[bh, j, d] = dkj[d]
            for d in range(Dv):
                dv[bh, j, d] = dvj[d]

    return flash_forward, row_dot, flash_backward_dq, flash_backward_dkv


def _kernels(q, v):
    D, Dv = q.shape[-1], v.shape[-1]
    BM, BN = attn_tiles(D, Dv, q.dtype.itemsize)
    return build(np.dtype(q.dtype), D, Dv, BM, BN), BM, BN


def forward(q, k, v, scale, causal, out, lse):
    """out (BH, Tq, Dv), lse (BH, Tq) from q (BH, Tq, D), k (BH, Tk, D), v (BH, Tk, Dv); scale of q's dtype."""
    kernels, BM, _ = _kernels(q, v)
    launch(kernels[0], (q.shape[0], cdiv(q.shape[1], BM)), BM, q, k, v, scale, causal, out, lse)


def backward(q, k, v, out, lse, dout, scale, causal, delta, dq, dk, dv):
    """dq, dk, dv (filled here); delta (BH, Tq) is scratch for dout . out."""
    (_, row_dot, bwd_dq, bwd_dkv), BM, BN = _kernels(q, v)
    BH, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    threads = tiles().elementwise_threads
    launch(row_dot, min(cdiv(BH * Tq, threads), 65535), threads, dout, out, delta)
    launch(bwd_dq, (BH, cdiv(Tq, BM)), BM, q, k, v, lse, delta, dout, scale, causal, dq)
    launch(bwd_dkv, (BH, cdiv(Tk, BN)), BN, q, k, v, lse, delta, dout, scale, causal, dk, dv)
