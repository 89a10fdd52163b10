"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

Works on host NumPy arrays of shape (B, V) in float64, so the choice is the same whatever
device or dtype the model ran in."""
from __future__ import annotations

from numbers import Real

import numpy as np


def check_sampling_args(temperature: float, top_k, top_p) -> None:
    """Raise ValueError naming the bad value."""
    # bool is a Real and an int in Python: True would silently mean 1
    if isinstance(temperature, bool) or not (isinstance(temperature, Real) and temperature >= 0
                                             and np.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not (isinstance(top_p, Real) and 0 < top_p <= 1)):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def filter_logits(logits: np.ndarray, top_k=None, top_p=None) -> np.ndarray:
    """Logits with excluded tokens set to -inf.

    top_k keeps tokens whose logit is >= the k-th largest (ties at the boundary are kept).
    top_p keeps the smallest set of most likely tokens whose probabilities sum to >= top_p
    (the most likely token is always kept)."""
    logits = np.array(logits, dtype=np.float64)                     # (B, V), our copy
    V = logits.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(logits, V - top_k, axis=-1)[:, V - top_k][:, None]
        logits[logits < kth] = -np.inf
    if top_p is not None and top_p < 1:
        order = np.argsort(-logits, axis=-1, kind="stable")        # most likely first
        sorted_logits = np.take_along_axis(logits, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(axis=-1, keepdims=True)
        before = np.cumsum(probs, axis=-1) - probs                 # mass of strictly more likely tokens
        drop_sorted = before >= top_p                              # the first token has before == 0
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        logits[drop] = -np.inf
    return logits


def sample(logits: np.ndarray, temperature: float = 1.0, top_k=None, top_p=None,
           rng: np.random.Generator | None = None) -> np.ndarray:
    """Next token ids (B,) from logits (B, V). temperature 0 means greedy (argmax)."""
    logits = np.asarray(logits, dtype=np.float64)
    if not np.isfinite(logits).any(axis=-1).all():
        raise FloatingPointError("sample: a row of logits has no finite value (the model produced NaN/inf)")
    if np.isnan(logits).any():
        raise FloatingPointError("sample: logits contain NaN")
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = filter_logits(logits, top_k)       # the ranking, so top-k, does not depend on temperature
    # shift before dividing: a tiny temperature then sends the others to -inf, never the max to inf (NaN)
    with np.errstate(over="ignore"):
        logits = filter_logits((logits - logits.max(axis=-1, keepdims=True)) / temperature, top_p=top_p)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    rng = rng if rng is not None else np.random.default_rng()
    # inverse-CDF sampling per row: one uniform number per row keeps the stream reproducible
    u = rng.random((probs.shape[0], 1))
    # token i owns [cdf[i-1], cdf[i]): counting cdf <= u never lands on a zero-probability token, even at u == 0
    idx = (np.cumsum(probs, axis=-1) <= u).sum(axis=-1)
    # rounding can push u past the total mass: fall back to the last allowed token
    last_allowed = probs.shape[-1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(idx, last_allowed)
