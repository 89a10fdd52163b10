"""Tiled shared-memory matmul, c[b] = a[b] @ b[b]: an educational kernel beside cuBLAS.

a (B, M, K), b (B, K, N), c (B, M, N), C-contiguous. Each block computes a BM x BN tile of c
(grid: N tiles, M tiles, batch). It walks K in steps of BK: the block's threads copy a BM x BK
tile of a and a BK x BN tile of b into shared memory (coalesced: neighbouring threads read
neighbouring elements of a row), then every thread multiplies them into its own TM x TN
outputs held in registers. Register blocking is what makes it faster than one output per
thread: each value read from shared memory is used TN (or TM) times. A thread's outputs are
strided by the thread grid (rows ty + i*(BM/TM), columns tx + j*(BN/TN)), so a warp reads
consecutive b columns (no bank conflicts) and one broadcast a value, and writes c coalesced.

The model's matmuls go to cuBLAS (CuPy's ``@``); this kernel is benchmarked against it in
benchmarks/bench_cuda.py (no tensor cores here, so expect a fraction of cuBLAS)."""
import functools

import numpy as np
from numba import cuda

from ._launch import cdiv, kernel, launch, numba_type, tiles


@functools.cache
def build(dtype, BM, BN, BK, TM, TN):
    T = numba_type(dtype)
    t = np.dtype(dtype).type
    ZERO = t(0)
    SY, SX = BM // TM, BN // TN              # thread grid: SX threads along N (x), SY along M (y)
    NT = SX * SY
    arr3 = f"{T}[:, :, ::1]"

    @kernel(f"void({arr3}, {arr3}, {arr3})")
    def matmul_tiled(a, b, c):
        bz = cuda.blockIdx.z
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * SX + tx
        M, K, N = a.shape[1], a.shape[2], b.shape[2]
        m0, n0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        As = cuda.shared.array((BM, BK), T)
        Bs = cuda.shared.array((BK, BN), T)
        acc = cuda.local.array((TM, TN), T)
        ar = cuda.local.array(TM, T)
        br = cuda.local.array(TN, T)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = ZERO
        for k0 in range(0, K, BK):
            for e in range(tid, BM * BK, NT):    # a tile; zeros past the edges of a
                r, kk = e // BK, e % BK
                As[r, kk] = a[bz, m0 + r, k0 + kk] if m0 + r < M and k0 + kk < K else ZERO
            for e in range(tid, BK * BN, NT):    # b tile
                kk, col = e // BN, e % BN
                Bs[kk, col] = b[bz, k0 + kk, n0 + col] if k0 + kk < K and n0 + col < N else ZERO
            cuda.syncthreads()  # both tiles are in shared memory before any thread multiplies
            for kk in range(BK):
                for i in range(TM):
                    ar[i] = As[ty + i * SY, kk]
                for j in range(TN):
                    br[j] = Bs[kk, tx + j * SX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ar[i] * br[j]
            cuda.syncthreads()  # every thread is done with the tiles before the next step overwrites them
        for i in range(TM):
            r = m0 + ty + i * SY
            if r < M:
                for j in range(TN):
                    col = n0 + tx + j * SX
                    if col < N:
                        c[bz, r, col] = acc[i, j]

    return matmul_tiled


def matmul(a, b, c):
    """c = a @ b for (B, M, K) @ (B, K, N) -> (B, M, N), all C-contiguous and of one dtype."""
    tl = tiles()
    kern = build(np.dtype(a.dtype), tl.mm_bm, tl.mm_bn, tl.mm_bk, tl.mm_tm, tl.mm_tn)
    B, M, N = a.shape[0], a.shape[1], b.shape[2]
    launch(kern, (cdiv(N, tl.mm_bn), cdiv(M, tl.mm_bm), B), (tl.mm_bn // tl.mm_tn, tl.mm_bm // tl.mm_tm), a, b, c)
