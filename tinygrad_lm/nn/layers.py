"""Basic layers. Weights follow PyTorch's layouts and default initialisations."""
from __future__ import annotations

import contextlib
import math

import numpy as np

from .. import functional as F
from ..tensor import get_rng
from .hooks import HookPoint
from .module import Module, Parameter


_SKIP_INIT = [False]


@contextlib.contextmanager
def skip_init():
    """Build layers with uninitialised (np.empty) weights, for weights that are about to be loaded:
    drawing 135M random numbers only to overwrite them costs seconds, and untouched np.empty
    memory is not even paged in."""
    _SKIP_INIT.append(True)
    try:
        yield
    finally:
        _SKIP_INIT.pop()


def init_skipped() -> bool:
    return _SKIP_INIT[-1]


def _uniform(shape, bound, dtype):
    if init_skipped():
        return np.empty(shape, dtype)
    return (get_rng().random(shape) * 2 - 1).astype(dtype) * dtype(bound)


class Linear(Module):
    """y = x @ weight.T + bias; weight (out_features, in_features), PyTorch's uniform init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"Linear: sizes must be positive, got in={in_features}, out={out_features}")
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound, dtype))
        self.bias = Parameter(_uniform((out_features,), bound, dtype)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table of num_embeddings vectors of size embedding_dim, N(0, 1) init like PyTorch."""

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=np.float32):
        super().__init__()
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(f"Embedding: sizes must be positive, got {num_embeddings}, {embedding_dim}")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        shape = (num_embeddings, embedding_dim)
        self.weight = Parameter(np.empty(shape, dtype) if init_skipped()
                                else get_rng().standard_normal(shape).astype(dtype))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer normalisation over the last axis, with a learned scale and an optional bias."""

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim, dtype))
        self.bias = Parameter(np.zeros(dim, dtype)) if bias else None
        self.hook_normalized = HookPoint()   # tinygrad_lm.lens: the output, scale and bias applied

    def forward(self, x):
        return self.hook_normalized(F.layer_norm(x, self.weight, self.bias, self.eps))

    def extra_repr(self):
        return f"({self.dim},), eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(Module):
    """Root-mean-square normalisation over the last axis with a learned scale (LLaMA's norm)."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=np.float32):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = Parameter(np.ones(dim, dtype))
        self.hook_normalized = HookPoint()   # tinygrad_lm.lens: the output, scale applied

    def forward(self, x):
        return self.hook_normalized(F.rms_norm(x, self.weight, self.eps))

    def extra_repr(self):
        return f"({self.dim},), eps={self.eps}"


class Dropout(Module):
    """Zeroes elements with probability p while training; identity in eval mode."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
