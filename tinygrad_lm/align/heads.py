"""Scalar heads on a transformer's hidden states: a reward model's score and PPO's value.

The reward model scores a whole sequence at its last token: ``pick_last(h, last_token_index(mask))``
then ``ScalarHead``; the value head scores every position of the response."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..nn.layers import Linear, init_skipped
from ..nn.module import Parameter
from ..tensor import Tensor, get_rng, host_array


class ScalarHead(Linear):
    """Linear(n_embd, 1) that returns one scalar per position: (..., n_embd) -> (...).

    Initialisation (as in OpenAI's lm-human-preferences, Ziegler et al. 2019): the reward head's
    weight is N(0, 1 / (n_embd + 1)), so a unit-variance hidden state gives scores of about unit
    variance; ``zero_init=True`` (for PPO's value head) starts every value at 0, so the first
    advantages are the rewards themselves rather than noise. The bias starts at 0 either way."""

    def __init__(self, n_embd: int, zero_init: bool = False, dtype=np.float32):
        super().__init__(n_embd, 1, bias=True, dtype=dtype)
        self.zero_init = zero_init
        if init_skipped():
            return
        if zero_init:
            w = np.zeros((1, n_embd), dtype)
        else:
            w = (get_rng().standard_normal((1, n_embd)) / math.sqrt(n_embd + 1)).astype(dtype)
        self.weight = Parameter(w)
        self.bias = Parameter(np.zeros(1, dtype))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).squeeze(-1)

    def extra_repr(self):
        return f"n_embd={self.in_features}, zero_init={self.zero_init}"


def last_token_index(mask_or_lengths) -> np.ndarray:
    """Index of each row's last real token -> (B,) int64.

    Given lengths (B,) ints: lengths - 1 (right padding). Given a mask (B, T) (bool or 0/1): the
    position of the last true entry, so left padding works too. A row with no token is an error."""
    a = host_array(mask_or_lengths)
    if a.ndim == 1:
        if a.dtype.kind not in "iu":
            raise TypeError(f"last_token_index: lengths must be integers, got dtype {a.dtype}")
        idx = a.astype(np.int64) - 1
    elif a.ndim == 2:
        m = a.astype(bool)
        T = m.shape[1]
        idx = np.where(m.any(axis=1), T - 1 - np.argmax(m[:, ::-1], axis=1), -1).astype(np.int64)
    else:
        raise ValueError(f"last_token_index: expected lengths (B,) or a mask (B, T), got shape {a.shape}")
    if idx.size and idx.min() < 0:
        raise ValueError(f"last_token_index: row {int(np.argmin(idx))} has no tokens")
    return idx


def pick_last(hidden: Tensor, index) -> Tensor:
    """hidden[b, index[b]] for each row b: (B, T, ...) -> (B, ...), differentiable (the gradient
    goes to the picked positions only)."""
    idx = host_array(index).astype(np.int64)
    B, T = hidden.shape[:2]
    if idx.shape != (B,):
        raise ValueError(f"pick_last: index of shape {idx.shape} does not match hidden of shape {hidden.shape}")
    if B and (idx.min() < 0 or idx.max() >= T):
        raise IndexError(f"pick_last: index {int(idx.min() if idx.min() < 0 else idx.max())} out of range "
                         f"for {T} positions")
    xp = backend.xp_of(hidden.data)
    return hidden[xp.arange(B), xp.asarray(idx)]
