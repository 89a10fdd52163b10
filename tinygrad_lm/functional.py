"""Neural-network functions on Tensors (import as F). Inputs are validated here; the math of
each op's forward and backward lives in tinygrad_lm/ops/nn.py."""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .ops import nn as _nn
from .ops.nn import causal_mask
from .tensor import Tensor, get_rng, where

__all__ = ["softmax", "log_softmax", "cross_entropy", "layer_norm", "rms_norm", "gelu", "silu", "swiglu", "rope", "relu",
           "dropout", "embedding", "linear", "scaled_dot_product_attention",
           "attention_scores"]


def _axis(x: Tensor, axis: int, op: str) -> int:
    return backend.normalize_axis(axis, x.ndim, op)[0] if x.ndim else 0


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``; stable for huge logits, a row of all -inf gives zeros."""
    return _nn.Softmax.apply(x, axis=_axis(x, axis, "softmax"))


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along ``axis``, computed stably."""
    return _nn.LogSoftmax.apply(x, axis=_axis(x, axis, "log_softmax"))


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Mean (or sum, or per-item) of -log softmax(logits)[target]; logits (..., C), targets (...) ints.

    Targets equal to ``ignore_index`` contribute nothing; the mean is over the other targets
    (0 when there are none). Classes are on the last axis (for 2-D logits this is PyTorch's layout)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    t = targets.data if isinstance(targets, Tensor) else backend.xp_of(logits.data).asarray(targets)
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integers, got dtype {t.dtype}")
    if logits.ndim < 1 or t.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {t.shape} do not match logits of shape "
                         f"{logits.shape} (expected targets of shape {logits.shape[:-1]})")
    C = logits.shape[-1]
    if t.size:
        used = t[t != ignore_index]
        if used.size and (int(used.min()) < 0 or int(used.max()) >= C):
            bad = int(used.min()) if int(used.min()) < 0 else int(used.max())
            raise ValueError(f"cross_entropy: target {bad} is out of range for {C} classes "
                             f"(valid: 0..{C - 1}, or ignore_index={ignore_index})")
    return _nn.CrossEntropy.apply(logits, targets=t, ignore_index=ignore_index, reduction=reduction)


def _check_param(p, x: Tensor, name: str, op: str):
    if p is not None and p.shape != (x.shape[-1],):
        raise ValueError(f"{op}: {name} has shape {p.shape}, expected ({x.shape[-1]},) to match the last "
                         f"axis of input {x.shape}")


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis; weight and bias may be None."""
    _check_param(weight, x, "weight", "layer_norm")
    _check_param(bias, x, "bias", "layer_norm")
    params = [p for p in (weight, bias) if p is not None]
    return _nn.LayerNorm.apply(x, *params, eps=eps, has_weight=weight is not None, has_bias=bias is not None)


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the last axis (no centering, no bias)."""
    _check_param(weight, x, "weight", "rms_norm")
    params = [weight] if weight is not None else []
    return _nn.RMSNorm.apply(x, *params, eps=eps, has_weight=weight is not None)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x): exact with erf ("none"), or GPT-2's tanh approximation ("tanh")."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _nn.Gelu.apply(x, approximate=approximate)


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x) (also called swish)."""
    return _nn.Silu.apply(x)


def swiglu(h: Tensor) -> Tensor:
    """silu(gate) * up where gate and up are the first and second halves of h's last axis."""
    if h.ndim < 1 or h.shape[-1] % 2:
        raise ValueError(f"swiglu: the last axis of h {h.shape} must be even (gate and up stacked)")
    return _nn.SwiGLU.apply(h)


def rope(x: Tensor, cos, sin, pairing: str = "half") -> Tensor:
    """Rotate pairs of x's last-axis features by the angles whose cosines and sines are cos and sin
    (arrays broadcasting against x, e.g. (T, hs)); pairing "half" or "adjacent" (see nn.RoPE)."""
    if pairing not in ("half", "adjacent"):
        raise ValueError(f"rope: pairing must be 'half' or 'adjacent', got {pairing!r}")
    if x.shape[-1] % 2 or cos.shape[-1] != x.shape[-1] or sin.shape != cos.shape:
        raise ValueError(f"rope: x {x.shape} needs an even last axis, and cos {cos.shape} and sin {sin.shape} "
                         "the same last axis")
    return _nn.Rope.apply(x, cos=cos, sin=sin, pairing=pairing)


def relu(x: Tensor) -> Tensor:
    """max(x, 0)."""
    return x.relu()


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p); identity when not training."""
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    keep = get_rng().random(x.shape, dtype=np.float32) >= p
    mask = backend.to_device(keep.astype(x.dtype) * x.dtype.type(1 / (1 - p) if p < 1 else 0), x.device)
    return x * Tensor._wrap(mask, False)


def embedding(ids, weight: Tensor) -> Tensor:
    """Rows of ``weight`` (num, dim) picked by integer ``ids`` of any shape -> (*ids.shape, dim)."""
    idx = ids.data if isinstance(ids, Tensor) else backend.xp_of(weight.data).asarray(ids)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got dtype {idx.dtype}")
    if weight.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got shape {weight.shape}")
    n = weight.shape[0]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        bad = int(idx.min()) if int(idx.min()) < 0 else int(idx.max())
        raise IndexError(f"embedding: id {bad} is out of range for {n} embeddings")
    return _nn.Embedding.apply(weight, ids=idx)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias with PyTorch's weight layout (out_features, in_features)."""
    if weight.ndim != 2 or x.shape[-1:] != weight.shape[1:]:
        raise ValueError(f"linear: input of shape {x.shape} does not fit weight of shape {weight.shape} "
                         f"(weight is (out_features, in_features); input's last axis must be in_features)")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear: bias has shape {bias.shape}, expected ({weight.shape[0]},)")
    return _nn.Linear.apply(x, weight, *([bias] if bias is not None else []))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, mask=None,
                                 scale: float | None = None) -> Tensor:
    """softmax(q @ k^T * scale + mask) @ v. q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv).

    ``mask`` is boolean (True = may attend, like PyTorch) or additive float, broadcastable to
    (..., Tq, Tk). ``causal`` uses :func:`causal_mask` (aligned bottom-right). Without a mask this is
    one fused op (ops.nn.Attention) that the kernel switch can hand to a fast kernel."""
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(f"scaled_dot_product_attention: q, k, v need at least 2 dims, got {q.shape}, {k.shape}, {v.shape}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"scaled_dot_product_attention: shapes do not fit: q {q.shape}, k {k.shape}, v {v.shape} "
                         f"(need q[-1] == k[-1] and k[-2] == v[-2])")
    if mask is None and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return _nn.Attention.apply(q, k, v, scale=scale, causal=causal)   # fused, never keeps (Tq, Tk)
    return softmax(attention_scores(q, k, causal, mask, scale), axis=-1) @ v   # (..., Tq, Dv)


def attention_scores(q: Tensor, k: Tensor, causal: bool = False, mask=None, scale: float | None = None) -> Tensor:
    """q @ k^T * scale with the entries a query may not see at -inf (or plus an additive float mask):
    (..., Tq, Tk), what softmax turns into attention weights. The readable path of
    scaled_dot_product_attention, kept apart so the scores can be looked at (tinygrad_lm.lens)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    att = (q @ k.swapaxes(-1, -2)) * scale                                  # (..., Tq, Tk)
    xp = backend.xp_of(q.data)
    if causal:
        att = att.masked_fill(~causal_mask(q.shape[-2], k.shape[-2], xp), -np.inf)
    if mask is not None:
        m = mask.data if isinstance(mask, Tensor) else xp.asarray(mask)
        att = att.masked_fill(~m, -np.inf) if m.dtype == bool else att + Tensor._wrap(m.astype(att.dtype), False)
    return att


# re-exported so F.where works like the top-level function
where = where
