"""Causal multi-head self-attention with grouped-query heads, RoPE and a KV cache."""
from __future__ import annotations

from .. import functional as F
from ..tensor import Tensor
from .layers import Dropout, Linear
from .module import Module


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    Buffers are allocated once for max_len positions; ``pos`` is how many are filled."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, xp):
        shape = (batch, n_kv_head, max_len, head_dim)                      # (B, nkv, Tmax, hs)
        self.keys = [xp.zeros(shape, dtype) for _ in range(n_layer)]
        self.values = [xp.zeros(shape, dtype) for _ in range(n_layer)]
        self.max_len, self.pos = max_len, 0

    def update(self, layer: int, k, v):
        """Store k, v (B, nkv, T, hs) after the cached ones; return all keys and values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KVCache: {end} positions exceed its capacity of {self.max_len}")
        self.keys[layer][:, :, self.pos:end] = k
        self.values[layer][:, :, self.pos:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int):
        self.pos += n

    def reset(self):
        self.pos = 0


class CausalSelfAttention(Module):
    """Multi-head attention where each position attends to itself and earlier positions.

    n_kv_head < n_head gives grouped-query attention: each key/value head serves n_head/n_kv_head
    query heads. Parameter names follow GPT-2 (c_attn holds q, k, v stacked; c_proj projects back)."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, rope=None):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_head < 1 or n_kv_head < 1:
            raise ValueError(f"n_head ({n_head}) and n_kv_head ({n_kv_head}) must be >= 1")
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be divisible by n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, n_embd // n_head
        kv_dim = n_kv_head * self.head_dim
        self.c_attn = Linear(n_embd, n_embd + 2 * kv_dim, bias=bias)
        self.c_proj = Linear(n_embd, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)
        self.rope = rope

    def forward(self, x: Tensor, start: int = 0, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, C = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        qkv = self.c_attn(x)                                                   # (B, T, C + 2 nkv hs)
        q = qkv[..., :C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)           # (B, nh, T, hs)
        k = qkv[..., C:C + nkv * hs].reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)   # (B, nkv, T, hs)
        v = qkv[..., C + nkv * hs:].reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)    # (B, nkv, T, hs)
        if self.rope is not None:
            q, k = self.rope(q, start), self.rope(k, start)
        if cache is not None:  # inference only: earlier keys/values come from the cache
            k_all, v_all = cache.update(layer, k.data, v.data)
            k, v = Tensor._wrap(k_all, False), Tensor._wrap(v_all, False)      # (B, nkv, start+T, hs)
        if nkv != nh:  # each kv head serves nh/nkv consecutive query heads
            k, v = (repeat_kv(t, nh // nkv) for t in (k, v))                  # (B, nh, Tk, hs)
        y = F.scaled_dot_product_attention(q, k, v, causal=True)               # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)                           # (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self):
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, rope={self.rope is not None}"


def repeat_kv(t: Tensor, rep: int) -> Tensor:
    """(B, nkv, T, hs) -> (B, nkv * rep, T, hs), repeating each head rep times in place."""
    B, nkv, T, hs = t.shape
    return t.reshape(B, nkv, 1, T, hs).broadcast_to(B, nkv, rep, T, hs).reshape(B, nkv * rep, T, hs)

