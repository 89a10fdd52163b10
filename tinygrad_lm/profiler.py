"""Where the time of a forward, a backward or a training step goes, per op type.

    with tinygrad_lm.profile() as p:
        _, loss = model(x, y)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    print(p.table())            # p.to_dict() for JSON; p.ops["Linear"]["forward"].seconds ...

Inside the block, every Function subclass's ``forward``, ``backward`` and ``add_grad_into``, every
optimizer's ``step`` and ``zero_grad``, and ``clip_grad_norm`` (wherever a module imported it by
name) are replaced by timing wrappers; leaving the block, by an exception too, puts the originals
back. Outside a profile nothing is wrapped and nothing is checked: an op costs what it always did.
Profiles may nest: the wrappers go in once and every running profile records each call.

Per op type and phase ("forward", "backward", or "call" for the optimizer and clipping) a profile
keeps calls, seconds, estimated FLOPs and bytes, and which implementation ran:

    fast        a hot op's registered fast kernel (Numba on cpu, Numba CUDA on cuda)
    reference   a hot op's readable reference pair (backend.implementation chose it)
    numpy/cupy  an op with no registered pair: plain array code on that device

FLOPs and bytes are estimates from shapes, not hardware counters:
  - matmul (..., M, K) @ (K, N): 2*M*N*K forward; the same again per input gradient asked for.
    Linear adds its bias (one FLOP per output); QuantLinear adds dequantizing its weight.
  - attention: 2*D (q k^T) + 2*Dv (p v) + 5 (softmax) per visible query-key pair (a causal mask
    hides about half), per batch and head; backward 6*D + 4*Dv + 5 (scores recomputed, four products).
  - elementwise and fused ops: the arithmetic operations their reference formula does per output
    element (exp, log, tanh and erf count one each), e.g. Add 1, LayerNorm 8 forward and 14 backward;
    reductions per input element; reshapes, slices and casts none. See ``_FLOPS``.
  - AdamW 12 per parameter element, SGD 2 (plus 3 with momentum), clip_grad_norm 2 (plus 1 when
    it scales).
  - bytes: every array an op reads or writes, once (forward: inputs + output; backward: output
    gradient + the forward's inputs, which it mostly reads again + input gradients; AdamW reads
    p, g, m, v and writes p, m, v). A view (reshape, transpose, basic slice) moves nothing, and a
    gather (Embedding, indexing) reads only what it writes. Caches and temporaries are ignored.
An op that ran forward outside the profile and backward inside it has an unknown backward cost
(None, "?" in the table). Ops on other threads are recorded too (the wrappers are global)."""
from __future__ import annotations

import functools
import inspect
import math
import sys
from dataclasses import dataclass, field
from time import perf_counter

import numpy as np

from . import backend, optim
from .tensor import Function, Tensor

__all__ = ["profile", "PhaseStats"]

KERNEL_LEGEND = ("kernel: fast = a registered fast kernel; reference = a hot op's readable pair; "
                 "numpy/cupy = plain array code (no registered pair)")


@dataclass
class PhaseStats:
    """What one op type did in one phase: calls, seconds, FLOPs (None if some call's cost is
    unknown), bytes, and the set of implementations that ran."""
    calls: int = 0
    seconds: float = 0.0
    flops: int | None = 0
    bytes: int = 0
    kernels: set = field(default_factory=set)

    def add(self, seconds: float, flops, nbytes: int, kernel) -> None:
        self.calls += 1
        self.seconds += seconds
        self.flops = None if flops is None or self.flops is None else self.flops + int(flops)
        self.bytes += int(nbytes)
        if kernel is not None:
            self.kernels.add(kernel)

    def merge(self, other: "PhaseStats") -> "PhaseStats":
        """Add another's counts into this one (a row's phases together, the whole profile); returns self."""
        self.calls += other.calls
        self.seconds += other.seconds
        self.flops = None if other.flops is None or self.flops is None else self.flops + other.flops
        self.bytes += other.bytes
        self.kernels |= other.kernels
        return self

    def to_dict(self) -> dict:
        return {"calls": self.calls, "seconds": self.seconds, "flops": self.flops, "bytes": self.bytes,
                "kernels": sorted(self.kernels)}


class profile:
    """Context manager: record every op, optimizer step and clipping run inside it (see the
    module's docstring). Entering the same profile again later adds to what it holds."""

    def __init__(self):
        self.ops: dict[str, dict[str, PhaseStats]] = {}   # op type -> phase -> stats
        self.wall_s = 0.0                                   # time spent inside the with-block(s)
        self.overhead_s = 0.0                               # of which the profiler's own bookkeeping
        self._t0 = None

    def __enter__(self) -> "profile":
        if self in _active:
            raise RuntimeError("this profile is already running; nest a new tinygrad_lm.profile() instead")
        if not _active:
            _install()
        _active.append(self)
        self._t0 = perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        self.wall_s += perf_counter() - self._t0
        _active.remove(self)
        if not _active:
            _uninstall()
        return False

    def _add(self, name: str, phase: str, seconds: float, flops, nbytes: int, kernel) -> None:
        phases = self.ops.get(name)
        if phases is None:
            phases = self.ops[name] = {}
        stats = phases.get(phase)
        if stats is None:
            stats = phases[phase] = PhaseStats()
        stats.add(seconds, flops, nbytes, kernel)

    # ---- reading it ------------------------------------------------------------------------
    def total(self) -> PhaseStats:
        """Every recorded call together (kernels: the union)."""
        out = PhaseStats()
        for phases in self.ops.values():
            for s in phases.values():
                out.merge(s)
        return out

    def to_dict(self) -> dict:
        """JSON-ready: {"wall_s", "overhead_s", "ops": {name: {phase: {calls, seconds, flops, bytes,
        kernels}}}, "total"}."""
        return {"wall_s": self.wall_s, "overhead_s": self.overhead_s,
                "ops": {name: {ph: s.to_dict() for ph, s in phases.items()} for name, phases in self.ops.items()},
                "total": self.total().to_dict()}

    def table(self, steps: int = 1) -> str:
        """A text table, slowest op type first. ``steps``: divide everything by it (per-step numbers
        for a profile of that many training steps)."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"table: steps must be a positive integer, got {steps!r}")
        rows = []
        for name, phases in self.ops.items():
            both = PhaseStats()
            for s in phases.values():
                both.merge(s)
            fwd, bwd = phases.get("forward"), phases.get("backward")
            calls = both.calls - (bwd.calls if bwd else 0)   # a row's calls: its forwards (or plain calls)
            rows.append((both.seconds, name, _kernel_text(phases), calls, fwd and fwd.seconds, bwd and bwd.seconds,
                         both.flops, both.bytes))
        rows.sort(key=lambda r: -r[0])
        wall = self.wall_s / steps
        width = max([len(r[1]) for r in rows] + [24])
        head = (f"{'op':{width}s} {'kernel':14s} {'calls':>7s} {'fwd ms':>9s} {'bwd ms':>9s} {'total ms':>9s} "
                f"{'share':>6s} {'FLOPs':>7s} {'bytes':>7s} {'FLOP/s':>7s}")
        lines = [head, "-" * len(head)]
        ms = lambda s: "-" if s is None else f"{s / steps * 1e3:9.3f}"  # noqa: E731
        for seconds, name, kernel, calls, fwd_s, bwd_s, flops, nbytes in rows:
            lines.append(f"{name:{width}s} {kernel:14s} {_count(calls / steps):>7s} {ms(fwd_s):>9s} {ms(bwd_s):>9s} "
                         f"{ms(seconds):>9s} {_share(seconds / steps, wall):>6s} {_si(flops, steps):>7s} "
                         f"{_si(nbytes, steps):>7s} {_rate(flops, seconds):>7s}")
        total = self.total()
        lines.append("-" * len(head))
        lines.append(f"{'all ops':{width}s} {'':14s} {_count(sum(r[3] for r in rows) / steps):>7s} {'':9s} {'':9s} "
                     f"{ms(total.seconds):>9s} {_share(total.seconds / steps, wall):>6s} "
                     f"{_si(total.flops, steps):>7s} {_si(total.bytes, steps):>7s} "
                     f"{_rate(total.flops, total.seconds):>7s}")
        lead = len(head.split("total ms")[0]) - 2    # these lines' labels span the columns before "total ms"
        rest = self.wall_s - total.seconds - self.overhead_s
        per = f" per step ({steps} steps)" if steps > 1 else ""
        for label, seconds in (("rest (Python between ops, autograd walk, data)", rest),
                               ("the profiler itself (absent without a profile)", self.overhead_s),
                               ("wall time inside the profile" + per, self.wall_s)):
            lines.append(f"{label:{lead}s} {ms(seconds)} {_share(seconds / steps, wall):>6s}")
        lines.append(KERNEL_LEGEND)
        return "\n".join(lines)


def _kernel_text(phases: dict) -> str:
    """One cell: 'fast', or 'f:numpy b:fast' when forward and backward ran different kinds."""
    kinds = {ph: ",".join(sorted(s.kernels)) for ph, s in phases.items() if s.kernels}
    if len(set(kinds.values())) <= 1:
        return next(iter(kinds.values()), "-")
    return " ".join(f"{ph[0]}:{k}" for ph, k in kinds.items())


def _count(x: float) -> str:
    return f"{x:,.0f}" if x == int(x) else f"{x:,.1f}"


def _share(seconds: float, wall: float) -> str:
    return f"{seconds / wall:.1%}" if wall > 0 else "-"


def _si(x, steps: int = 1) -> str:
    """1234567 -> '1.23M': FLOPs and bytes of a tiny model and of a large one fit one column."""
    if x is None:
        return "?"
    x = x / steps
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.0f}"


def _rate(flops, seconds: float) -> str:
    return "-" if not flops or seconds <= 0 else _si(flops / seconds)


# ---- swapping the wrappers in and out ------------------------------------------------------

_active: list[profile] = []   # the profiles running now, outermost first
_saved: list = []             # (owner, attribute, original) for every swapped attribute


def _record(name: str, phase: str, t0: float, t1: float, flops, nbytes: int, kernel) -> None:
    """Add a call that ran from t0 to t1 to every running profile; the time from t1 to the end of
    this function (estimating costs, recording) is the profiler's own, counted apart."""
    for p in _active:
        p._add(name, phase, t1 - t0, flops, nbytes, kernel)
    spent = perf_counter() - t1
    for p in _active:
        p.overhead_s += spent


def _subclasses(cls) -> list:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        if c not in out:
            out.append(c)
            todo.extend(c.__subclasses__())
    return out


def _swap(owner, name: str, new) -> None:
    _saved.append((owner, name, getattr(owner, "__dict__")[name]))
    setattr(owner, name, new)


def _install() -> None:
    """Wrap what each class defines itself (an inherited method is wrapped once, on the class that
    defines it, and records under the name of the instance's own class)."""
    wrappers = {"forward": _timed_forward, "backward": _timed_backward, "add_grad_into": _timed_add_grad_into}
    for cls in _subclasses(Function)[1:]:
        for name, wrap in wrappers.items():
            if inspect.isfunction(cls.__dict__.get(name)):
                _swap(cls, name, wrap(cls.__dict__[name]))
    for cls in _subclasses(optim.Optimizer):
        for name, wrap in (("step", _timed_step), ("zero_grad", _timed_zero_grad)):
            if inspect.isfunction(cls.__dict__.get(name)):
                _swap(cls, name, wrap(cls.__dict__[name]))
    # clip_grad_norm is a function that train.py (and user code) imports by name: swap every binding
    # of it, in every loaded module, reading module dicts directly (a module's __getattr__ may import)
    original, timed = optim.clip_grad_norm, _timed_clip(optim.clip_grad_norm)
    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", None)
        if isinstance(names, dict):
            for name in ("clip_grad_norm", "clip_grad_norm_"):
                if names.get(name) is original:
                    _swap(module, name, timed)


def _uninstall() -> None:
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


# ---- the wrappers --------------------------------------------------------------------------

def _plain_kind(arr) -> str:
    return "numpy" if backend.device_of(arr) == "cpu" else "cupy"


def _kernel_of(ctx, arr) -> str:
    """Which implementation a node ran: its hot op's pair (kept as ctx.impl), else plain array code."""
    impl = ctx.__dict__.get("impl")
    return _plain_kind(arr) if impl is None else backend.implementation_kind(impl)


def _root(a):
    while getattr(a, "base", None) is not None:
        a = a.base
    return a


def _is_view_of(a, arrays) -> bool:
    root = _root(a)
    return any(root is _root(b) for b in arrays)


_busy: set = set()   # ids of the graph nodes inside a timed method now


def _outermost(make_timed):
    """Time a node's method only when the node is not inside one of its timed methods already
    (GetItem's backward calls its own add_grad_into; a subclass's forward may call its parent's):
    the outer call is the one recorded, once."""
    def make(fn):
        timed = make_timed(fn)

        @functools.wraps(fn)
        def method(ctx, *args, **kwargs):
            key = id(ctx)
            if key in _busy:
                return fn(ctx, *args, **kwargs)
            _busy.add(key)
            try:
                return timed(ctx, *args, **kwargs)
            finally:
                _busy.discard(key)
        return method
    return make


@_outermost
def _timed_forward(fn):
    def forward(ctx, *args, **kwargs):
        t0 = perf_counter()
        out = fn(ctx, *args, **kwargs)
        t1 = perf_counter()
        name = type(ctx).__name__
        cost = _FLOPS.get(name)
        flops, back_flops = (None, None) if cost is None else cost(args, out, kwargs, getattr(ctx, "needs_input_grad", ()))
        if name in _GATHERS:   # reads the rows it writes (and its indices), not the whole table
            in_bytes = out.nbytes + sum(a.nbytes for a in args[1:])
        else:
            in_bytes = sum(a.nbytes for a in args)
        nbytes = 0 if _is_view_of(out, args) else in_bytes + out.nbytes
        ctx._profile_backward = (back_flops, in_bytes)   # what the backward's cost needs, kept on the node
        _record(name, "forward", t0, t1, flops, nbytes, _kernel_of(ctx, out))
        return out
    return forward


@_outermost
def _timed_backward(fn):
    def backward(ctx, g):
        t0 = perf_counter()
        grads = fn(ctx, g)
        t1 = perf_counter()
        flops, in_bytes = ctx.__dict__.get("_profile_backward", (None, 0))
        written = sum(x.nbytes for x in (grads if isinstance(grads, tuple) else (grads,))
                      if x is not None and not _is_view_of(x, (g,)))
        nbytes = g.nbytes + in_bytes + written if written else 0
        _record(type(ctx).__name__, "backward", t0, t1, flops, nbytes, _kernel_of(ctx, g))
        return grads
    return backward


@_outermost
def _timed_add_grad_into(fn):
    def add_grad_into(ctx, g, acc):
        t0 = perf_counter()
        out = fn(ctx, g, acc)
        # one addition per element of g, reading g and reading + writing its slice of acc
        _record(type(ctx).__name__, "backward", t0, perf_counter(), g.size, 3 * g.nbytes, _plain_kind(g))
        return out
    return add_grad_into


def _grads_of(params) -> list:
    return [p.grad for p in params if p.grad is not None]


def _timed_step(fn):
    @functools.wraps(fn)
    def step(opt, *args, **kwargs):
        t0 = perf_counter()
        out = fn(opt, *args, **kwargs)
        t1 = perf_counter()
        params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
        n, b = sum(p.data.size for p in params), sum(p.data.nbytes for p in params)
        kernel = _plain_kind(params[0].data) if params else None
        if isinstance(opt, optim.AdamW):
            flops, nbytes = 12 * n, 7 * b
            if params:
                kernel = backend.implementation_kind(backend.implementation("adamw", params[0].data))
        elif isinstance(opt, optim.SGD):
            momentum = any(g["momentum"] for g in opt.param_groups)
            flops, nbytes = (5 if momentum else 2) * n, (5 if momentum else 3) * b
        else:
            flops, nbytes = None, 0
        _record(f"{type(opt).__name__}.step", "call", t0, t1, flops, nbytes, kernel)
        return out
    return step


def _timed_zero_grad(fn):
    @functools.wraps(fn)
    def zero_grad(opt, *args, **kwargs):
        t0 = perf_counter()
        out = fn(opt, *args, **kwargs)
        _record(f"{type(opt).__name__}.zero_grad", "call", t0, perf_counter(), 0, 0, None)
        return out
    return zero_grad


def _timed_clip(fn):
    @functools.wraps(fn)
    def clip_grad_norm(params, max_norm, *args, **kwargs):
        params = [params] if isinstance(params, Tensor) else list(params)   # a generator is read twice below
        t0 = perf_counter()
        total = fn(params, max_norm, *args, **kwargs)
        t1 = perf_counter()
        grads = _grads_of(params)
        n, b = sum(g.size for g in grads), sum(g.nbytes for g in grads)
        scaled = math.isfinite(total) and max_norm / (total + 1e-6) < 1.0
        _record("clip_grad_norm", "call", t0, t1, (3 if scaled else 2) * n, (3 if scaled else 1) * b,
                _plain_kind(grads[0]) if grads else None)
        return total
    return clip_grad_norm


# ---- FLOPs per op type: name -> (args, out, kwargs, needs_input_grad) -> (forward, backward) ----

def _per_output(forward: int, backward: int):
    return lambda args, out, kw, needs: (forward * out.size, backward * out.size)


def _per_input(forward: int, backward: int):   # reductions: the work follows the input's size
    return lambda args, out, kw, needs: (forward * args[0].size, backward * args[0].size)


def _matmul(args, out, kw, needs):
    f = 2 * out.size * args[0].shape[-1]                 # each output element: a K-long dot product
    return f, f * sum(needs[:2])


def _linear(args, out, kw, needs):                       # x (..., K), w (N, K), b (N,)
    mm = 2 * out.size * args[0].shape[-1]
    bias = out.size if len(args) > 2 else 0
    return mm + bias, mm * sum(needs[:2]) + (bias if len(needs) > 2 and needs[2] else 0)


def _quant_linear(args, out, kw, needs):                 # x (..., K), *b; the weight is dequantized per call
    mm = 2 * out.size * args[0].shape[-1] + int(np.prod(kw["qweight"].shape))
    return mm + (out.size if len(args) > 1 else 0), mm if needs[0] else 0


def _visible_pairs(tq: int, tk: int) -> int:
    """Query-key pairs a causal mask lets through (bottom-right aligned, as ops.nn.causal_mask)."""
    return int(np.clip(np.arange(tq) + (tk - tq) + 1, 0, tk).sum())


def _attention(args, out, kw, needs):                    # q (..., Tq, D), k (..., Tk, D), v (..., Tk, Dv)
    q, k, v = args
    tq, d, tk, dv = q.shape[-2], q.shape[-1], k.shape[-2], v.shape[-1]
    pairs = (q.size // max(tq * d, 1)) * (_visible_pairs(tq, tk) if kw["causal"] else tq * tk)
    return pairs * (2 * d + 2 * dv + 5), pairs * (6 * d + 4 * dv + 5)


def _gelu(args, out, kw, needs):
    return _per_output(8, 15)(args, out, kw, needs) if kw["approximate"] == "tanh" else \
        _per_output(5, 10)(args, out, kw, needs)


_FREE = _per_output(0, 0)   # reshapes, slices, casts: data movement only

_FLOPS = {
    "Add": _per_output(1, 0), "Sub": _per_output(1, 1), "Mul": _per_output(1, 2), "Div": _per_output(1, 4),
    "Pow": _per_output(1, 7), "PowScalar": _per_output(1, 3), "Neg": _per_output(1, 1),
    "Exp": _per_output(1, 1), "Log": _per_output(1, 1), "Sqrt": _per_output(1, 2), "Abs": _per_output(1, 2),
    "Tanh": _per_output(1, 3), "Sigmoid": _per_output(4, 3), "Relu": _per_output(1, 1),
    "Maximum": _per_output(1, 2), "Minimum": _per_output(1, 2), "Clip": _per_output(2, 2),
    "Where": _per_output(1, 2),
    "Sum": _per_input(1, 0), "Mean": _per_input(1, 1), "Max": _per_input(1, 2), "Var": _per_input(3, 4),
    "Reshape": _FREE, "Transpose": _FREE, "GetItem": _FREE, "Concatenate": _FREE, "Cast": _FREE,
    "Expand": _per_output(0, 1),                        # its backward sums the copies back
    "MatMul": _matmul, "Linear": _linear, "QuantLinear": _quant_linear, "Attention": _attention,
    "Softmax": _per_output(5, 4), "LogSoftmax": _per_output(5, 4), "CrossEntropy": _per_input(4, 3),
    "LayerNorm": _per_output(8, 14), "RMSNorm": _per_output(4, 9), "Gelu": _gelu,
    "Silu": _per_output(5, 8), "SwiGLU": _per_output(6, 15), "Rope": _per_output(4, 4),
    "Embedding": _per_output(0, 1),                     # a gather; its backward scatter-adds g
}
_GATHERS = ("Embedding", "GetItem")
