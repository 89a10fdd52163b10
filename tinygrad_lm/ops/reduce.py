"""Reductions over an axis tuple (already normalized by the Tensor method)."""
import math

from ..backend import xp_of
from ..tensor import Function


def _expand_back(g, shape, axis, keepdims):
    """Broadcast a reduced gradient back to the input shape."""
    if not keepdims:
        g = g.reshape(tuple(1 if i in axis else s for i, s in enumerate(shape)))
    return xp_of(g).broadcast_to(g, shape)


class Sum(Function):
    def forward(self, x, axis, keepdims):
        self.shape, self.axis, self.keepdims = x.shape, axis, keepdims
        return x.sum(axis=axis, keepdims=keepdims)

    def backward(self, g):  # each input element contributes once
        return _expand_back(g, self.shape, self.axis, self.keepdims)


class Mean(Function):
    def forward(self, x, axis, keepdims):
        self.shape, self.axis, self.keepdims = x.shape, axis, keepdims
        self.n = math.prod(x.shape[a] for a in axis)
        return x.mean(axis=axis, keepdims=keepdims)

    def backward(self, g):  # each input element contributes 1/n
        return _expand_back(g / self.n, self.shape, self.axis, self.keepdims)


class Max(Function):
    """max (sign=1) or min (sign=-1); tied extrema share the gradient evenly."""

    def forward(self, x, axis, keepdims, sign):
        out = x.max(axis=axis, keepdims=True) if sign > 0 else x.min(axis=axis, keepdims=True)
        self.x, self.out_k, self.axis, self.keepdims = x, out, axis, keepdims
        return out if keepdims else out.reshape(tuple(s for i, s in enumerate(x.shape) if i not in axis))

    def backward(self, g):
        hit = (self.x == self.out_k).astype(g.dtype)
        count = hit.sum(axis=self.axis, keepdims=True)
        g = g if self.keepdims else g.reshape(self.out_k.shape)
        return hit * (g / count)


class Var(Function):
    def forward(self, x, axis, keepdims, ddof):
        n = math.prod(x.shape[a] for a in axis)
        if n - ddof <= 0:
            raise ValueError(f"var: ddof={ddof} leaves no degrees of freedom for {n} elements")
        self.centered = x - x.mean(axis=axis, keepdims=True)
        self.shape, self.axis, self.keepdims, self.dof = x.shape, axis, keepdims, n - ddof
        return (self.centered * self.centered).sum(axis=axis, keepdims=keepdims) / self.dof

    def backward(self, g):  # d var = 2 (x - mean) / (n - ddof) dx
        g = _expand_back(g, self.shape, self.axis, self.keepdims)
        return g * self.centered * (2 / self.dof)
