"""Positional encodings that are not parameters: rotary (RoPE) and fixed sinusoidal tables."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor, concatenate


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """(n_pos, dim) table of "Attention Is All You Need": sin on even, cos on odd features."""
    pos = np.arange(n_pos)[:, None]
    freq = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)       # (ceil(dim/2),)
    table = np.zeros((n_pos, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return table


class RoPE:
    """Rotary position embedding (GPT-NeoX / LLaMA "rotate half" layout) for head_dim-sized vectors.

    A query at position m and a key at position n are rotated so that their dot product depends
    only on m - n; cached keys therefore keep their rotation as decoding goes on."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0):
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)        # (hs/2,)
        angles = np.arange(max_len)[:, None] * inv_freq[None, :]                # (T, hs/2)
        self.cos = np.concatenate([np.cos(angles)] * 2, axis=-1)                # (T, hs)
        self.sin = np.concatenate([np.sin(angles)] * 2, axis=-1)
        self.half, self.max_len = head_dim // 2, max_len
        self._tables = {}  # (dtype, device) -> (cos, sin) arrays

    def _get(self, dtype, device):
        key = (np.dtype(dtype), device)
        if key not in self._tables:
            self._tables[key] = tuple(backend.to_device(t.astype(dtype), device) for t in (self.cos, self.sin))
        return self._tables[key]

    def __call__(self, x: Tensor, start: int = 0) -> Tensor:
        """Rotate x (..., T, head_dim) as if its rows sat at positions start .. start+T-1."""
        T = x.shape[-2]
        if start + T > self.max_len:
            raise ValueError(f"RoPE: positions up to {start + T} exceed the table of {self.max_len}")
        cos, sin = self._get(x.dtype, x.device)
        cos, sin = (Tensor._wrap(t[start:start + T], False) for t in (cos, sin))   # (T, hs)
        rotated = concatenate([-x[..., self.half:], x[..., :self.half]], axis=-1)   # rotate_half(x)
        return x * cos + rotated * sin
