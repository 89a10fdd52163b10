"""Module, Parameter and containers, with PyTorch's training API (parameters, state_dict, train/eval).

A Module finds its parameters and sub-modules by looking at its attributes, in the order they
were assigned, so a model reads like nanoGPT's. A Parameter assigned under two names (tied
weights) appears once in parameters() and under both names in state_dict(), as in PyTorch."""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import backend
from ..tensor import Tensor


class Parameter(Tensor):
    """A Tensor that a Module trains: requires_grad is True by default."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, dtype=None, device=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype, device=device)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class of every layer and model."""

    def __init__(self):
        self.training = True

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- walking the tree ---------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return [m for _, m in self.named_children()]

    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def get_submodule(self, target: str) -> "Module":
        """The module at dotted path ``target`` ("" is self), as in PyTorch."""
        m = self
        for part in target.split(".") if target else []:
            child = getattr(m, part, None)
            if not isinstance(child, Module):
                raise AttributeError(f"{type(m).__name__} has no sub-module {part!r} (in {target!r})")
            m = child
        return m

    def set_submodule(self, target: str, module: "Module") -> None:
        """Put ``module`` at dotted path ``target`` in place of what is there (an adapter around a layer)."""
        parent, _, name = target.rpartition(".")
        self.get_submodule(parent).get_submodule(name)   # it must exist: a typo never adds a new module
        setattr(self.get_submodule(parent), name, module)

    def _named_tensors(self, prefix: str = ""):
        """Every (name, Parameter), tied ones under each of their names."""
        for name, value in vars(self).items():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(value, Parameter):
                yield full, value
            elif isinstance(value, Module):
                yield from value._named_tensors(full)

    def named_parameters(self):
        """(name, Parameter) pairs; a tied parameter is listed once, under its first name."""
        seen = set()
        for name, p in self._named_tensors():
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self, trainable: bool = False) -> int:
        """Number of parameter values; trainable=True counts only those with requires_grad."""
        return sum(p.size for p in self.parameters() if p.requires_grad or not trainable)

    # ---- modes and gradients ---------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, flag: bool = True):
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    # ---- device and dtype -----------------------------------------------------------------
    def to(self, device=None, dtype=None):
        """Move (and/or cast) every parameter in place; tied parameters stay tied."""
        device = backend.normalize_device(device) if device is not None else None
        for p in self.parameters():
            data = p.data if device is None else backend.to_device(p.data, device)
            if dtype is not None:
                data = data.astype(dtype)
            p.data = data
            p.grad = None if p.grad is None else (backend.to_device(p.grad, device) if device else p.grad).astype(data.dtype)
        for m in self.modules():
            m._on_move()
        return self

    def _on_move(self):
        """Hook for modules that cache device arrays (e.g. RoPE tables)."""

    def double(self):
        return self.to(dtype=np.float64)

    def float(self):
        return self.to(dtype=np.float32)

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Every parameter as a host NumPy array (a copy), keyed by its dotted name."""
        return OrderedDict((name, backend.to_numpy(p.data).copy()) for name, p in self._named_tensors())

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy arrays into the parameters (cast to their dtype, moved to their device).

        strict: missing or unexpected keys raise KeyError listing them. Shape mismatches always
        raise ValueError naming the key and both shapes. Returns (missing, unexpected)."""
        own = OrderedDict(self._named_tensors())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(parts))
        new = {}
        for k, p in own.items():
            if k in state_dict:
                v = state_dict[k].data if isinstance(state_dict[k], Tensor) else state_dict[k]
                arr = np.asarray(v) if backend.xp_of(v) is np else backend.to_numpy(v)  # CuPy: copy to host
                if arr.shape != p.shape:
                    raise ValueError(f"load_state_dict: '{k}' has shape {arr.shape} in the state dict but "
                                     f"{p.shape} in the model")
                new[k] = arr.astype(p.dtype)
        for k, arr in new.items():  # checked and converted everything first: never leave the model half-loaded
            own[k].data = backend.to_device(arr, own[k].device)
        return missing, unexpected

    # ---- printing ---------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = list(self.named_children())
        extra = self.extra_repr()
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}("] + ([f"  {extra}"] if extra else [])  # PyTorch's layout
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules whose parameters are named by index: h.0.attn..., h.1.attn..."""

    def __init__(self, modules=()):
        super().__init__()
        self._n = 0
        for m in modules:
            self.append(m)

    def append(self, module: Module):
        setattr(self, str(self._n), module)
        self._n += 1
        return self

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ModuleList([self[j] for j in range(self._n)[i]])
        if not -self._n <= i < self._n:
            raise IndexError(f"ModuleList index {i} out of range for {self._n} modules")
        return getattr(self, str(i % self._n))

    def __len__(self):
        return self._n

    def __iter__(self):
        return (getattr(self, str(i)) for i in range(self._n))


class ModuleDict(Module):
    """Named sub-modules (nanoGPT keeps wte, wpe, h, ln_f in one, hence 'transformer.wte.weight')."""

    def __init__(self, modules=None):
        super().__init__()
        for name, m in (modules or {}).items():
            setattr(self, name, m)

    def __getitem__(self, name):
        return getattr(self, name)

    def keys(self):
        return [n for n, _ in self.named_children()]


class Sequential(ModuleList):
    """Apply modules one after another: Sequential(Linear(4, 8), Linear(8, 2)), as in PyTorch."""

    def __init__(self, *modules: Module):
        super().__init__(modules)

    def __getitem__(self, i):
        return Sequential(*super().__getitem__(i)) if isinstance(i, slice) else super().__getitem__(i)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x
