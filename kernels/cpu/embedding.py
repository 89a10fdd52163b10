"""Embedding backward: scatter-add rows of g into the weight gradient (repeated ids add up)."""
import numpy as np

from ._jit import serial


@serial
def embedding_backward(ids, g, num_embeddings):
    """ids (N,) int64, g (N, C) -> dW (num_embeddings, C). Serial: two ids may hit one row."""
    N, C = g.shape
    dw = np.zeros((num_embeddings, C), dtype=g.dtype)
    for i in range(N):
        row = ids[i]
        for j in range(C):
            dw[row, j] += g[i, j]
    return dw
