"""Optimizers, gradient clipping and the learning-rate schedule (PyTorch-like API).

``SGD`` and ``AdamW`` follow ``torch.optim.SGD`` / ``torch.optim.AdamW`` update rules
exactly. They update ``p.data`` in place, in the parameter's own dtype (float32 stays
float32), on whatever device the parameter lives (the array module comes from
``backend.xp_of``). Parameters whose ``.grad`` is None are skipped, like in PyTorch.

Typical loop, with gradient accumulation (nothing special is needed: every
``backward()`` adds into ``p.grad`` until ``zero_grad()`` drops it)::

    for it in range(max_iters):
        set_lr(opt, cosine_with_warmup(it, 6e-4, 100, max_iters, 6e-5))
        for x, y in micro_batches:                     # accum_steps of them
            (model(x, y) / accum_steps).backward()     # mean over the whole batch
        clip_grad_norm(model.parameters(), 1.0)
        opt.step(); opt.zero_grad()

``state_dict()`` holds copies on the host (NumPy arrays; options and counters as Python
numbers, JSON-friendly), so it can be saved as is; ``load_state_dict()`` copies them onto
each parameter's device and dtype.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .backend import implementation, register_reference, to_numpy, xp_of
from .tensor import enable_grad

__all__ = ["Optimizer", "SGD", "AdamW", "adamw_update", "clip_grad_norm", "clip_grad_norm_",
           "cosine_with_warmup", "set_lr"]


# ---- validation helpers (errors name the bad value) -----------------------------------------

def _check_number(name: str, value, low=0.0, high=None, high_open=False):
    """Raise ValueError unless low <= value (< or <=) high; NaN always fails."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    ok = value >= low and (high is None or (value < high if high_open else value <= high))
    if not ok:  # also catches NaN, for which every comparison is False
        bound = "" if high is None else f" and {'<' if high_open else '<='} {high}"
        raise ValueError(f"invalid {name}: {value!r} (must be >= {low}{bound})")


def _params_list(params, what: str) -> list:
    """The Tensors of ``params`` as a list; a lone Tensor is an error (like PyTorch)."""
    if hasattr(params, "data") and hasattr(params, "requires_grad"):
        raise TypeError(f"{what} should be an iterable of Tensors or dicts, got a single Tensor; "
                        f"wrap it in a list")
    return list(params)


def _plain(value):
    """NumPy scalars (also inside tuples) as Python numbers, so a state_dict is JSON-friendly."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value.item() if isinstance(value, np.generic) else value


# ---- the base class -------------------------------------------------------------------------

class Optimizer:
    """Base class: holds param groups and per-parameter state; subclasses implement ``step``.

    ``params`` is an iterable of Tensors, or of dicts (PyTorch "param groups") each with a
    ``"params"`` entry and options that override the optimizer's defaults for that group.
    ``state[p]`` is a dict of this parameter's buffers (created on its first update).

    Subclasses set ``defaults`` (via ``__init__``), ``_array_state`` (names of the per-
    parameter arrays, shaped like the parameter) and ``_scalar_state`` (Python numbers), and
    override ``_validate_group`` for their options."""

    _array_state: tuple = ()
    _scalar_state: tuple = ()

    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.param_groups: list[dict] = []
        self.state: dict = {}  # Tensor -> dict; Tensor hashes by identity
        groups = _params_list(params, f"params argument of {type(self).__name__}")
        if not groups:
            raise ValueError(f"{type(self).__name__} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        if not any(g["params"] for g in self.param_groups):
            raise ValueError(f"{type(self).__name__} got an empty parameter list")

    def add_param_group(self, group: dict) -> None:
        """Add a group: a dict with "params" and optional option overrides (missing ones default)."""
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict with a 'params' entry, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError("a param group dict needs a 'params' entry")
        params = _params_list(group["params"], "a param group's 'params'")
        seen_tensors = {id(p) for g in self.param_groups for p in g["params"]}
        seen_arrays = {id(p.data) for g in self.param_groups for p in g["params"]}
        for i, p in enumerate(params):
            if not (hasattr(p, "data") and hasattr(p, "requires_grad")):
                raise TypeError(f"optimizer can only optimize Tensors, got {type(p).__name__} at index {i}")
            if not p.requires_grad:
                raise ValueError(f"parameter {i} of the group (shape {p.shape}) does not require grad; "
                                 f"leave it out or call requires_grad_()")
            if not getattr(p, "is_leaf", True):
                raise ValueError(f"parameter {i} of the group (shape {p.shape}) is not a leaf tensor "
                                 f"(it was computed by ops); optimize the tensor it came from")
            if id(p) in seen_tensors:
                raise ValueError(f"parameter {i} of the group (shape {p.shape}) appears more than once "
                                 f"in the optimizer's parameters")
            # Two Tensors over one array would be updated twice per step (e.g. a badly tied weight).
            if id(p.data) in seen_arrays:
                raise ValueError(f"parameter {i} of the group (shape {p.shape}) shares its data array "
                                 f"with another parameter; pass the shared Tensor once")
            seen_tensors.add(id(p))
            seen_arrays.add(id(p.data))
        new = {**self.defaults, **{k: v for k, v in group.items() if k != "params"}, "params": params}
        self._validate_group(new)
        self.param_groups.append(new)

    def _validate_group(self, group: dict) -> None:
        _check_number("lr", group["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (``set_to_none=False`` fills it with zeros instead)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad[...] = 0

    def step(self, closure=None):
        """One update of every parameter that has a gradient. ``closure`` (optional) re-evaluates
        the model, calls backward and returns the loss, which ``step`` returns."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:  # like torch: no gradient, no update, no state
                    continue
                if p.grad.shape != p.data.shape or p.grad.dtype != p.data.dtype:
                    raise ValueError(f"gradient of shape {p.grad.shape} dtype {p.grad.dtype} does not match "
                                     f"its parameter's shape {p.data.shape} dtype {p.data.dtype}")
                self._update(p, p.grad, self.state.setdefault(p, {}), group)
        return loss

    def _update(self, p, g, state: dict, group: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- saving and loading ----------------------------------------------------------------

    def state_dict(self) -> dict:
        """``{"state": {index: {name: value}}, "param_groups": [{options..., "params": [indices]}]}``.

        Parameters are numbered 0, 1, ... across groups in order (as in PyTorch). Arrays are
        NumPy copies on the host: the dict is a snapshot that later steps do not change."""
        index = {}
        groups = []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index[id(p)] = len(index)
                ids.append(index[id(p)])
            groups.append({**{k: _plain(v) for k, v in group.items() if k != "params"}, "params": ids})
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if self.state.get(p):
                    state[index[id(p)]] = {k: (to_numpy(v).copy() if k in self._array_state else _plain(v))
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore options and state saved by ``state_dict()`` (everything is checked first;
        on an error nothing changes). Saved arrays are copied to each parameter's device/dtype."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"loaded state_dict has {len(saved_groups)} parameter groups but the optimizer "
                             f"has {len(self.param_groups)}")
        by_index = {}
        new_groups = []
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {gi}: loaded state_dict has {len(saved['params'])} parameters "
                                 f"but the optimizer has {len(group['params'])}")
            missing = [k for k in self.defaults if k not in saved]
            if missing:
                raise ValueError(f"parameter group {gi}: loaded state_dict lacks option(s) {missing}; was it "
                                 f"saved from a different optimizer than {type(self).__name__}?")
            new = {**{k: v for k, v in saved.items() if k != "params"}, "params": group["params"]}
            self._validate_group(new)
            new_groups.append(new)
            by_index.update(zip(saved["params"], group["params"]))

        expected = set(self._array_state) | set(self._scalar_state)
        new_state = {}
        for i, entry in state_dict["state"].items():
            if i not in by_index:
                raise ValueError(f"loaded state_dict has state for parameter {i}, which no group lists")
            p = by_index[i]
            if set(entry) != expected:
                raise ValueError(f"state of parameter {i} has entries {sorted(entry)} but {type(self).__name__} "
                                 f"expects {sorted(expected)}")
            xp = xp_of(p.data)
            new = {}
            for k, v in entry.items():
                if k in self._array_state:
                    if np.shape(v) != p.data.shape:
                        raise ValueError(f"state of parameter {i}: {k!r} has shape {np.shape(v)} but the "
                                         f"parameter has shape {p.data.shape}")
                    v = xp.array(v, dtype=p.data.dtype)  # always a fresh copy on p's device
                else:
                    v = int(v) if k == "step" else v  # an npz round trip may hand back 0-d arrays
                new[k] = v
            new_state[p] = new
        self.param_groups = new_groups
        self.state = new_state

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            opts = ", ".join(f"{k}={v}" for k, v in g.items() if k != "params")
            lines.append(f"  group {i}: {len(g['params'])} params, {opts}")
        return "\n".join(lines + [")"])


# ---- SGD ------------------------------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, exactly torch.optim.SGD::

        g = grad + weight_decay * p
        if momentum:  b = g on the first step, else b = momentum * b + (1 - dampening) * g
                      g = g + momentum * b if nesterov else b
        p -= lr * g
    """

    _array_state = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov))

    def _validate_group(self, group):
        super()._validate_group(group)
        _check_number("momentum", group["momentum"])
        _check_number("dampening", group["dampening"], high=1.0)
        _check_number("weight_decay", group["weight_decay"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _update(self, p, g, state, group):
        t = p.data.dtype.type  # cast every scalar: a float64 scalar would upcast float32 arrays
        mu, wd = group["momentum"], group["weight_decay"]
        if wd != 0:
            g = g + t(wd) * p.data  # a new array: p.grad itself is left as backward made it
        if mu != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()  # torch starts the buffer at g, undamped
            else:
                buf *= t(mu)
                buf += t(1.0 - group["dampening"]) * g
            g = g + t(mu) * buf if group["nesterov"] else buf
        p.data -= t(group["lr"]) * g


# ---- AdamW ----------------------------------------------------------------------------------

def adamw_update(p, g, m, v, step: int, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float) -> None:
    """One AdamW update of the arrays ``p``, ``m``, ``v`` in place (torch.optim.AdamW's rule).

    ``g`` is the gradient, ``m``/``v`` the first/second moment buffers, ``step`` the number of
    this update (1 for the first). All arrays share one shape and dtype; the arithmetic stays
    in that dtype. This is the hot loop a fused kernel may replace: keep the signature."""
    t = p.dtype.type
    xp = xp_of(p)
    if weight_decay != 0:
        p *= t(1.0 - lr * weight_decay)  # decoupled decay: shrink p, not the gradient
    m *= t(beta1)
    m += t(1.0 - beta1) * g
    v *= t(beta2)
    v += t(1.0 - beta2) * (g * g)
    # Bias corrections in Python floats (like torch); m_hat/(sqrt(v_hat)+eps) folded into two scalars.
    bias1 = 1.0 - beta1 ** step
    bias2 = 1.0 - beta2 ** step
    denom = xp.sqrt(v)
    denom /= t(math.sqrt(bias2))
    denom += t(eps)
    update = xp.divide(m, denom, out=denom)  # reuse the buffer
    update *= t(lr / bias1)
    p -= update


register_reference("adamw", adamw_update, None)


class AdamW(Optimizer):
    """Adam with decoupled weight decay, exactly torch.optim.AdamW (no amsgrad)::

        p *= 1 - lr * weight_decay
        m = beta1 * m + (1 - beta1) * g ;  v = beta2 * v + (1 - beta2) * g * g
        p -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    ``t`` counts the updates of each parameter separately (a step where its grad is None
    does not count). ``m`` and ``v`` have the parameter's dtype."""

    _array_state = ("exp_avg", "exp_avg_sq")
    _scalar_state = ("step",)

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    def _validate_group(self, group):
        super()._validate_group(group)
        betas = group["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = tuple(betas)  # a list from a JSON round trip becomes a tuple again
        for i, b in enumerate(betas):
            _check_number(f"beta parameter at index {i}", b, high=1.0, high_open=True)
        _check_number("eps", group["eps"])
        _check_number("weight_decay", group["weight_decay"])

    def _update(self, p, g, state, group):
        if not state:
            xp = xp_of(p.data)
            state.update(step=0, exp_avg=xp.zeros_like(p.data), exp_avg_sq=xp.zeros_like(p.data))
        state["step"] += 1
        beta1, beta2 = group["betas"]
        contiguous = all(a.flags.c_contiguous for a in (p.data, g, state["exp_avg"], state["exp_avg_sq"]))
        update = implementation("adamw", p.data).forward if contiguous else adamw_update  # fused kernel or this file's
        update(p.data, g, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"],
               beta1, beta2, group["eps"], group["weight_decay"])


# ---- gradient clipping ----------------------------------------------------------------------

def _norm(g, norm_type: float) -> float:
    """The norm of one array as a Python float, rescued when its sum of powers overflows."""
    xp, flat = xp_of(g), g.ravel()
    with np.errstate(over="ignore"):
        n = float(xp.linalg.norm(flat, ord=norm_type))
    if n == math.inf and norm_type != math.inf:  # e.g. float32 |g| > 1.8e19: square overflows
        top = float(xp.abs(flat).max())
        if math.isfinite(top):  # all entries finite: the norm is top * norm(g / top)
            n = top * float(xp.linalg.norm(flat / flat.dtype.type(top), ord=norm_type))
    return n


def clip_grad_norm(params, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients together so their joint norm is at most ``max_norm``; return that
    norm (before clipping) as a Python float. Like torch.nn.utils.clip_grad_norm_:
    scale = max_norm / (total_norm + 1e-6), applied in place only when it is < 1.

    ``params``: a Tensor or an iterable of them; those with grad None are skipped (none at
    all gives 0.0). ``norm_type``: p > 0 or ``math.inf`` (max |g|).

    If the total norm is inf or NaN the gradients are left untouched and the norm is
    returned (or RuntimeError with ``error_if_nonfinite=True``): the caller decides, e.g.
    skip this step and zero_grad(), instead of having every gradient turned into NaN."""
    _check_number("max_norm", max_norm)
    if isinstance(norm_type, bool) or not isinstance(norm_type, Real) or not norm_type > 0:
        raise ValueError(f"invalid norm_type: {norm_type!r} (must be > 0 or math.inf)")
    if hasattr(params, "data") and hasattr(params, "requires_grad"):
        params = [params]
    grads, seen = [], set()
    for p in params:
        if p.grad is not None and id(p) not in seen:
            seen.add(id(p))
            grads.append(p.grad)
    if not grads:
        return 0.0
    # Norm of the per-tensor norms (as torch does); each one in its grad's own dtype.
    norms = [_norm(g, norm_type) for g in grads]
    top = max(norms)
    if any(math.isnan(n) for n in norms):
        total = math.nan
    elif norm_type == math.inf or top == 0.0 or top == math.inf:
        total = top
    else:  # factor out the largest norm so n ** norm_type cannot overflow a Python float
        total = top * math.fsum((n / top) ** norm_type for n in norms) ** (1.0 / norm_type)
    if not math.isfinite(total):
        if error_if_nonfinite:
            raise RuntimeError(f"the total norm of order {norm_type} of the gradients is {total}; "
                               f"gradients were not clipped")
        return total
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads:
            g *= g.dtype.type(scale)
    return total


clip_grad_norm_ = clip_grad_norm  # PyTorch's spelling (in place, trailing underscore)


# ---- learning-rate schedule -----------------------------------------------------------------

def cosine_with_warmup(step: int, lr: float, warmup_iters: int, lr_decay_iters: int, min_lr: float) -> float:
    """nanoGPT's get_lr: the learning rate for iteration ``step`` (0-based).

    Linear warmup lr * (step + 1) / (warmup_iters + 1) while step < warmup_iters, then a
    cosine from lr down to min_lr reached at step == lr_decay_iters, then min_lr."""
    _check_number("step", step)
    _check_number("lr", lr)
    _check_number("min_lr", min_lr, high=lr)
    _check_number("warmup_iters", warmup_iters)
    _check_number("lr_decay_iters", lr_decay_iters)
    if warmup_iters > lr_decay_iters:
        raise ValueError(f"warmup_iters ({warmup_iters}) must be <= lr_decay_iters ({lr_decay_iters})")
    if step < warmup_iters:
        return lr * (step + 1) / (warmup_iters + 1)
    if step >= lr_decay_iters:  # nanoGPT uses >, equal gives min_lr too; >= avoids 0/0 when equal
        return min_lr
    decay_ratio = (step - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (lr - min_lr)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set the learning rate of every param group (what nanoGPT does each iteration)."""
    _check_number("lr", lr)
    for group in optimizer.param_groups:
        group["lr"] = lr
