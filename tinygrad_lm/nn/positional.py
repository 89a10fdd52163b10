"""Positional encodings that are not parameters: rotary (RoPE) and fixed sinusoidal tables."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from .. import functional as F
from ..tensor import Tensor

ROPE_PAIRINGS = ("half", "adjacent")


def sinusoidal_table(n_pos: int, dim: int) -> np.ndarray:
    """(n_pos, dim) table of "Attention Is All You Need": sin on even, cos on odd features."""
    pos = np.arange(n_pos)[:, None]
    freq = 1.0 / 10000 ** (np.arange(0, dim, 2) / dim)       # (ceil(dim/2),)
    table = np.zeros((n_pos, dim))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[: dim // 2])
    return table


def rope_frequencies(head_dim: int, base: float = 10000.0, scaling: dict | None = None) -> np.ndarray:
    """(head_dim/2,) rotation speeds theta_i = base^(-2i/head_dim), optionally rescaled.

    scaling {"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings"} is Llama 3.1's long-context rule: wavelengths longer than
    the original context / low_freq_factor slow down by `factor`, shorter than original /
    high_freq_factor stay, and the band between is interpolated smoothly."""
    inv_freq = 1.0 / base ** (np.arange(0, head_dim, 2) / head_dim)
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return inv_freq
    if kind == "freq_factors":  # llama.cpp's rope_freqs.weight: one divisor per frequency
        factors = np.asarray(scaling.get("factors"), dtype=np.float64)
        if factors.shape != inv_freq.shape or not (factors > 0).all():
            raise ValueError(f"RoPE freq_factors: expected {inv_freq.shape[0]} positive factors, got {factors.shape}")
        return inv_freq / factors
    if kind != "llama3":
        raise ValueError(f"RoPE scaling {kind!r} is not supported (only 'llama3'); got {scaling}")
    try:
        factor, low, high = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
        old_len = float(scaling["original_max_position_embeddings"])
    except KeyError as e:
        raise ValueError(f"llama3 RoPE scaling lacks {e.args[0]!r}: {scaling}") from None
    wavelen = 2 * math.pi / inv_freq
    smooth = np.clip((old_len / wavelen - low) / (high - low), 0.0, 1.0)   # 0: slowed, 1: kept
    slowed = wavelen > old_len / low
    kept = wavelen < old_len / high
    return np.where(slowed, inv_freq / factor,
                    np.where(kept, inv_freq, (1 - smooth) * inv_freq / factor + smooth * inv_freq))


class RoPE:
    """Rotary position embedding for head_dim-sized vectors.

    A query at position m and a key at position n are rotated so that their dot product depends
    only on m - n; cached keys therefore keep their rotation as decoding goes on.

    pairing "half" (GPT-NeoX / Hugging Face Llama "rotate_half") rotates feature i with i + hs/2;
    "adjacent" (the original Llama code, GPT-J, llama.cpp) rotates features 2i and 2i+1. The two
    are the same rotation up to a fixed permutation of the q and k features, which is how
    llama.cpp's GGUF files store q and k weights (the hub undoes it at load; see hub/gguf_model.py).
    Tables are built for the positions used so far and grow on demand, up to max_len."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0, pairing: str = "half",
                 scaling: dict | None = None):
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        if pairing not in ROPE_PAIRINGS:
            raise ValueError(f"RoPE pairing must be one of {ROPE_PAIRINGS}, got {pairing!r}")
        self.inv_freq = rope_frequencies(head_dim, base, scaling)        # (hs/2,)
        self.half, self.max_len, self.pairing = head_dim // 2, max_len, pairing
        self._tables = {}  # (dtype, device) -> (cos, sin) arrays (n, hs), n grows by doubling

    def _get(self, n: int, dtype, device):
        key = (np.dtype(dtype), device)
        have = len(self._tables[key][0]) if key in self._tables else 0
        if have < n:
            n = min(self.max_len, max(n, 2 * have, 256))
            angles = np.arange(n)[:, None] * self.inv_freq[None, :]              # (n, hs/2)
            cos, sin = np.cos(angles), np.sin(angles)
            if self.pairing == "half":   # feature j uses angle j mod hs/2
                cos, sin = np.concatenate([cos, cos], axis=-1), np.concatenate([sin, sin], axis=-1)
            else:                        # feature j uses angle j // 2
                cos, sin = np.repeat(cos, 2, axis=-1), np.repeat(sin, 2, axis=-1)
            self._tables[key] = tuple(backend.to_device(t.astype(dtype), device) for t in (cos, sin))
        return self._tables[key]

    def __call__(self, x: Tensor, start: int = 0, positions=None) -> Tensor:
        """Rotate x (..., T, head_dim) as if its rows sat at positions start .. start+T-1, or, for
        x (B, heads, T, hs), at each row's own positions (B, T) (packed rows, each below T)."""
        T = x.shape[-2]
        if start + T > self.max_len:
            raise ValueError(f"RoPE: positions up to {start + T} exceed the table of {self.max_len}")
        cos, sin = self._get(start + T, x.dtype, x.device)
        if positions is not None:   # (B, T) -> (B, 1, T, hs): one row's angles serve all its heads
            return F.rope(x, cos[positions][:, None], sin[positions][:, None], self.pairing)
        return F.rope(x, cos[start:start + T], sin[start:start + T], self.pairing)   # (..., T, hs)
