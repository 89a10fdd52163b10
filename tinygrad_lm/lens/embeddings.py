"""The token embedding matrix as a map: nearest neighbours by cosine similarity and a 2-D PCA view.
Words used alike get similar vectors; these two functions let a user see it."""
from __future__ import annotations

import numpy as np

from ..tensor import host_array
from .hooks import as_gpt


def embedding_matrix(model) -> np.ndarray:
    """The token embeddings W_E (V, C) as a float64 host array."""
    return host_array(as_gpt(model).transformer.wte.weight).astype(np.float64)


def nearest_tokens(model, query, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The k tokens whose embeddings point most nearly the way ``query`` does -> (token ids (k,),
    cosine similarities (k,)), most similar first. query: a token id (left out of its own answer)
    or a vector (C,), e.g. W_E[a] - W_E[b] + W_E[c]. For many token ids use nearest_tokens_of_each."""
    if np.ndim(query) == 0:
        ids, cos = nearest_tokens_of_each(model, [query], k)
        return ids[0], cos[0]
    W = embedding_matrix(model)
    q = np.asarray(query, dtype=np.float64)
    if q.shape != (W.shape[1],):
        raise ValueError(f"nearest_tokens: a query vector must have shape ({W.shape[1]},), got {q.shape}")
    ids, cos = _nearest(W, q[None], None, k)
    return ids[0], cos[0]


def nearest_tokens_of_each(model, tokens, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """nearest_tokens for several token ids at once -> (ids (n, k), cosines (n, k)), row i for
    tokens[i] (left out of its own row). One pass over the embedding matrix for all of them: on a
    large vocabulary reading the matrix costs far more than the n dot products."""
    W = embedding_matrix(model)
    tokens = np.asarray(tokens).reshape(-1)
    V = len(W)
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"nearest_tokens: token ids must be integers, got dtype {tokens.dtype}")
    bad = tokens[(tokens < 0) | (tokens >= V)]
    if bad.size:
        raise ValueError(f"nearest_tokens: token id {bad[0]} is outside the vocabulary [0, {V})")
    return _nearest(W, W[tokens], tokens, k)


def _nearest(W: np.ndarray, queries: np.ndarray, exclude, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k embeddings (rows of W) most cosine-similar to each query row (n, C); row i leaves out
    token exclude[i] (exclude None: nothing left out)."""
    norms = np.linalg.norm(W, axis=1)[:, None] * np.linalg.norm(queries, axis=1)[None, :]
    cos = (W @ queries.T / np.where(norms == 0, 1, norms)).T               # (n, V)
    if exclude is not None:
        cos[np.arange(len(cos)), exclude] = -np.inf                        # a token is not its own neighbour
    k = min(int(k), W.shape[0] - (exclude is not None))
    best = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    return best, np.take_along_axis(cos, best, axis=1)


def embedding_pca(model, tokens=None) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings of ``tokens`` (default: the whole vocabulary) projected on their first two
    principal components -> (coordinates (N, 2), the share of the variance each axis explains (2,)).
    Each axis's sign is fixed so that its largest loading is positive (reruns draw the same map)."""
    W = embedding_matrix(model)
    if tokens is not None:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if tokens.size < 2 or tokens.min() < 0 or tokens.max() >= len(W):
            raise ValueError(f"embedding_pca: need at least 2 token ids in [0, {len(W)}), got {tokens.size} "
                             f"in [{tokens.min() if tokens.size else '-'}, {tokens.max() if tokens.size else '-'}]")
        W = W[tokens]
    X = W - W.mean(axis=0)                                                 # (N, C), centred
    # principal axes from the C x C covariance: cheaper than an SVD of N x C when N is a vocabulary
    variance, axes = np.linalg.eigh(X.T @ X)                               # ascending
    axes = axes[:, ::-1][:, :2]                                            # (C, 2)
    axes *= np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])
    total = variance.sum()
    return X @ axes, variance[::-1][:2] / (total if total > 0 else 1)
