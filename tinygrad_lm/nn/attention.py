"""Causal multi-head self-attention with grouped-query heads, RoPE and a KV cache; the mask and
positions of rows that pack several sequences."""
from __future__ import annotations

from .. import backend
from .. import functional as F
from ..ops.nn import causal_mask
from ..tensor import Tensor
from .hooks import HookPoint
from .layers import Dropout, Linear
from .module import Module


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding.

    ``pos`` is how many positions are filled. Buffers start small and double when full, up to
    max_len positions, so a model with a long context (8k for SmolLM2) does not reserve it all
    for a short chat."""

    def __init__(self, n_layer: int, batch: int, n_kv_head: int, max_len: int, head_dim: int, dtype, xp,
                 initial: int = 256):
        self._shape = (batch, n_kv_head, min(max_len, initial), head_dim)      # (B, nkv, Tcap, hs)
        self._dtype, self._xp = dtype, xp
        self.keys = [xp.zeros(self._shape, dtype) for _ in range(n_layer)]
        self.values = [xp.zeros(self._shape, dtype) for _ in range(n_layer)]
        self.max_len, self.pos = max_len, 0

    def _grow(self, layer: int, need: int):
        B, nkv, cap, hs = self.keys[layer].shape
        new_cap = min(self.max_len, max(need, 2 * cap))
        for buffers in (self.keys, self.values):
            grown = self._xp.zeros((B, nkv, new_cap, hs), self._dtype)
            grown[:, :, :self.pos] = buffers[layer][:, :, :self.pos]
            buffers[layer] = grown

    def update(self, layer: int, k, v):
        """Store k, v (B, nkv, T, hs) after the cached ones; return all keys and values so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise RuntimeError(f"KVCache: {end} positions exceed its capacity of {self.max_len}")
        if end > self.keys[layer].shape[2]:
            self._grow(layer, end)
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
                 dropout: float = 0.0, rope=None, head_dim: int | None = None, qkv_bias: bool | None = None):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_head < 1 or n_kv_head < 1:
            raise ValueError(f"n_head ({n_head}) and n_kv_head ({n_kv_head}) must be >= 1")
        if head_dim is None and n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be divisible by n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_dim = n_embd // n_head if head_dim is None else head_dim   # Llama-family models may set it apart
        q_dim, kv_dim = n_head * self.head_dim, n_kv_head * self.head_dim
        # qkv_bias apart from bias: Qwen2 has biases on q, k, v and nowhere else
        self.c_attn = Linear(n_embd, q_dim + 2 * kv_dim, bias=bias if qkv_bias is None else qkv_bias)
        self.c_proj = Linear(q_dim, n_embd, bias=bias)
        self.resid_dropout = Dropout(dropout)
        self.rope = rope
        # tinygrad_lm.lens hook points; q, k, v and z are shown as (B, T, heads, hs), TransformerLens's layout
        self.hook_q, self.hook_k, self.hook_v, self.hook_z = (HookPoint(axes=(0, 2, 1, 3)) for _ in range(4))
        self.hook_scores, self.hook_pattern = HookPoint(), HookPoint()

    def forward(self, x: Tensor, start: int = 0, cache: KVCache | None = None, layer: int = 0,
                mask=None, positions=None) -> Tensor:
        """x (B, T, C) -> (B, T, C). mask (B, 1, T, T) bool and positions (B, T): rows that pack
        several sequences (see packed_rows); a query then attends only to earlier keys where the
        mask is True, and RoPE turns q and k by the given positions instead of start .. start+T-1."""
        B, T, _ = x.shape
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        Q = nh * hs                                                            # = C unless head_dim was set
        qkv = self.c_attn(x)                                                   # (B, T, Q + 2 nkv hs)
        q = qkv[..., :Q].reshape(B, T, nh, hs).transpose(0, 2, 1, 3)           # (B, nh, T, hs)
        k = qkv[..., Q:Q + nkv * hs].reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)   # (B, nkv, T, hs)
        v = qkv[..., Q + nkv * hs:].reshape(B, T, nkv, hs).transpose(0, 2, 1, 3)    # (B, nkv, T, hs)
        if self.rope is not None:
            q, k = self.rope(q, start, positions), self.rope(k, start, positions)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)               # after RoPE; k, v before repeat_kv
        if cache is not None:  # inference only: earlier keys/values come from the cache
            k_all, v_all = cache.update(layer, k.data, v.data)
            k, v = Tensor._wrap(k_all, False), Tensor._wrap(v_all, False)      # (B, nkv, start+T, hs)
        if nkv != nh:  # each kv head serves nh/nkv consecutive query heads
            k, v = (repeat_kv(t, nh // nkv) for t in (k, v))                  # (B, nh, Tk, hs)
        if self.hook_scores.active or self.hook_pattern.active:
            # someone looks at the (T, Tk) matrix: the readable path, which has it
            scores = self.hook_scores(F.attention_scores(q, k, causal=True, mask=mask))   # (B, nh, T, Tk)
            y = self.hook_pattern(F.softmax(scores, axis=-1)) @ v              # (B, nh, T, hs)
        else:
            # without a mask this is the fused attention op (a fast kernel); a mask takes the readable path
            y = F.scaled_dot_product_attention(q, k, v, causal=True, mask=mask)    # (B, nh, T, hs)
        y = self.hook_z(y).transpose(0, 2, 1, 3).reshape(B, T, Q)              # (B, T, Q)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self):
        return f"n_head={self.n_head}, n_kv_head={self.n_kv_head}, rope={self.rope is not None}"


def repeat_kv(t: Tensor, rep: int) -> Tensor:
    """(B, nkv, T, hs) -> (B, nkv * rep, T, hs), repeating each head rep times in place."""
    B, nkv, T, hs = t.shape
    return t.reshape(B, nkv, 1, T, hs).broadcast_to(B, nkv, rep, T, hs).reshape(B, nkv * rep, T, hs)



def packed_rows(segment_ids, virtual: int = 0):
    """Who may attend to whom, and at which position each token sits, in rows that pack several
    sequences back to back: each token must see only earlier tokens of its own sequence, numbered
    as if that sequence stood alone, so a packed row computes what the separate rows would.

    segment_ids (B, T) integers: tokens with equal ids belong to one sequence. virtual: P soft-prompt
    tokens put before the row, which every sequence sees first, as it would alone.
    Returns mask (B, 1, P+T, P+T) bool (True: the key is the query's own sequence's or virtual;
    broadcast over heads) and positions (B, P+T) int: 0..P-1 for the virtual tokens, then P + the
    number of earlier tokens of the token's own sequence."""
    xp = backend.xp_of(segment_ids)
    B, T = segment_ids.shape
    P = virtual
    seen = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal_mask(T, T, xp)   # (B, T, T)
    positions = P + seen.sum(axis=-1) - 1                                   # (B, T): itself counts once
    if not P:
        return seen[:, None], positions
    mask = xp.ones((B, P + T, P + T), dtype=bool)   # virtual keys: seen by all (causality hides later ones)
    mask[:, P:, P:] = seen
    virtual_positions = xp.broadcast_to(xp.arange(P, dtype=positions.dtype), (B, P))
    return mask[:, None], xp.concatenate([virtual_positions, positions], axis=1)   # (B, 1, P+T, P+T), (B, P+T)
