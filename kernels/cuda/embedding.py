"""Embedding backward: scatter-add rows of g into the weight gradient (repeated ids add up).

One block per row of g, threads along its columns; two rows with the same id hit the same
row of dW, so the adds are atomic (their order, and so the last bits of a sum, can vary
from run to run). Ids outside [0, num_embeddings) are skipped (never written out of bounds)."""
import functools

import numpy as np
from numba import cuda

from ._launch import kernel, launch, numba_type, row_threads


@functools.cache
def build(dtype):
    T = numba_type(dtype)

    @kernel(f"void(int64[::1], {T}[:, ::1], {T}[:, ::1])")
    def embedding_backward(ids, g, dw):
        i, tid, nt = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x
        row = ids[i]
        if row < 0 or row >= dw.shape[0]:
            return
        for j in range(tid, g.shape[1], nt):
            cuda.atomic.add(dw, (row, j), g[i, j])

    return embedding_backward


def backward(ids, g, dw):
    """dw (num_embeddings, C), zero-filled by the caller, += g rows at ids."""
    launch(build(np.dtype(g.dtype)), ids.shape[0], row_threads(g.shape[1]), ids, g, dw)
