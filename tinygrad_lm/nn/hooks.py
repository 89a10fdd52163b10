"""HookPoint: a named place in a layer's forward where an activation can be looked at or replaced.

A layer passes an activation through its hook point (``x = self.hook_q(x)``). With nothing attached
that is one attribute test and the Tensor comes back untouched, so a model without hooks computes
exactly what it did before. tinygrad_lm.lens attaches functions by TransformerLens names
(``blocks.0.attn.hook_q``) for run_with_cache and run_with_hooks.

A HookPoint is deliberately not a Module: it holds no parameters and stays out of state_dict,
named_modules and the printed model."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import Tensor


class HookPoint:
    """Identity with attachable functions fn(activation, name) -> None | replacement.

    The function gets the activation as an array (NumPy on the CPU, CuPy on the GPU), read-only
    on NumPy, in the hook's documented layout: ``axes`` permutes the layer's internal layout into it
    (attention keeps (B, heads, T, hs) but shows (B, T, heads, hs), as TransformerLens does).
    Returning None (or the array it was given) keeps the activation and its gradient; returning
    another array of the same shape replaces it with a constant, so no gradient flows back through
    this point. Functions run in the order they were attached, each seeing the previous one's result."""

    __slots__ = ("axes", "fns")

    def __init__(self, axes: tuple[int, ...] | None = None):
        self.axes = axes
        self.fns: list = []          # (name, fn) pairs, attached by tinygrad_lm.lens

    @property
    def active(self) -> bool:
        return bool(self.fns)

    def __call__(self, x: Tensor) -> Tensor:
        if not self.fns:             # the fast path: no arrays, no ops
            return x
        shown = x.data if self.axes is None else x.data.transpose(self.axes)
        shown = _read_only(shown)
        replaced = False
        for name, fn in list(self.fns):
            out = fn(shown, name)
            if out is None or out is shown:
                continue
            if tuple(out.shape) != tuple(shown.shape):
                raise ValueError(f"hook {name!r} returned shape {tuple(out.shape)}; it must keep the activation's "
                                 f"shape {tuple(shown.shape)}")
            shown, replaced = _read_only(_as_array_like(out, x.data)), True
        if not replaced:
            return x
        data = shown if self.axes is None else shown.transpose(_inverse(self.axes))
        return Tensor._wrap(data.copy(), False)   # a constant in place of the activation; owns its memory

    def __repr__(self):
        return f"HookPoint({len(self.fns)} attached)"


def _read_only(a):
    """A NumPy view that refuses writes, so a hook cannot change an array the graph still uses
    (CuPy arrays have no such flag: there a hook must simply not write in place)."""
    if isinstance(a, np.ndarray):
        a = a.view()
        a.flags.writeable = False
    return a


def _as_array_like(out, like):
    """A hook's replacement as an array of the activation's dtype, on its device."""
    xp = backend.xp_of(like)
    out = out.data if isinstance(out, Tensor) else out
    return xp.asarray(out, dtype=like.dtype)


def _inverse(axes: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(axes)
    for i, a in enumerate(axes):
        inv[a] = i
    return tuple(inv)
