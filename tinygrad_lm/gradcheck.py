"""Finite-difference gradient checking, as a public tool.

The analytic gradient (our backward) is compared with central differences of the forward,
both in float64. For a non-scalar output we check the scalar <output, r> for a fixed random r.
``directional=True`` checks only the derivative along one random direction per input:
two forward evaluations per input instead of two per element (Chainer's check_backward idea)."""
from __future__ import annotations

import numpy as np

from . import backend
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Analytic and numeric gradients disagree (or the check could not be run)."""


def _scalar(out: Tensor, r) -> float:
    return float(backend.to_numpy((out.data * r).sum()))


def gradcheck(fn, inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              directional: bool = False, seed: int = 0) -> bool:
    """Check ``fn(*inputs)``'s backward against central differences in float64.

    ``inputs``: Tensors (or arrays/numbers, treated as constants). Every float Tensor with
    requires_grad=True is checked. Returns True or raises GradcheckError naming the input,
    the worst index and both values."""
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    rng = np.random.default_rng(seed)
    xs = []
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor):
            data = x.data
            if backend.is_float(data.dtype):
                if not bool(backend.xp_of(data).isfinite(data).all()):
                    raise ValueError(f"gradcheck: input {i} (shape {x.shape}) contains NaN or inf")
                data = data.astype(np.float64)
            xs.append(Tensor._wrap(data, False).requires_grad_(x.requires_grad))
        else:
            xs.append(x)
    checked = [i for i, x in enumerate(xs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise GradcheckError("gradcheck: no input requires grad; nothing to check")

    out = fn(*xs)
    if not isinstance(out, Tensor):
        raise GradcheckError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise GradcheckError(f"gradcheck: fn returned dtype {out.dtype} for float64 inputs (a silent downcast)")
    xp = backend.xp_of(out.data)
    r = xp.asarray(rng.standard_normal(out.shape))  # fixed random weights make any output a scalar
    out.backward(r.copy())

    def f() -> float:
        with no_grad():
            return _scalar(fn(*xs), r)

    for i in checked:
        x = xs[i]
        analytic = backend.to_numpy(x.grad) if x.grad is not None else np.zeros(x.shape)
        if analytic.shape != x.shape:  # a broadcastable wrong shape could otherwise compare equal
            raise GradcheckError(f"gradcheck: input {i} (shape {x.shape}): backward gave a gradient of "
                                 f"shape {analytic.shape}")
        flat = x.data.reshape(-1)  # a view: perturbing it perturbs the input in place
        if directional:
            d = xp.asarray(rng.standard_normal(x.shape)).reshape(-1)
            d /= max(float(np.linalg.norm(backend.to_numpy(d))), 1e-12)
            orig = flat.copy()
            flat[...] = orig + eps * d
            fp = f()
            flat[...] = orig - eps * d
            fm = f()
            flat[...] = orig
            numeric = (fp - fm) / (2 * eps)
            expect = float((analytic.reshape(-1) * backend.to_numpy(d)).sum())
            if not abs(expect - numeric) <= atol + rtol * abs(numeric):
                raise GradcheckError(f"gradcheck: input {i} (shape {x.shape}): directional derivative "
                                     f"analytic {expect:.8g} vs numeric {numeric:.8g}")
            continue
        numeric = np.empty(x.size)
        for j in range(x.size):
            v = flat[j].item()
            flat[j] = v + eps
            fp = f()
            flat[j] = v - eps
            fm = f()
            flat[j] = v
            numeric[j] = (fp - fm) / (2 * eps)
        numeric = numeric.reshape(x.shape)
        err = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if x.size and not (err <= 0).all():  # NaN (a non-finite gradient either way) fails too
            k = np.unravel_index(int(np.nanargmax(np.where(np.isfinite(err), err, np.inf))), x.shape)
            raise GradcheckError(f"gradcheck: input {i} (shape {x.shape}): gradient mismatch at index {k}: "
                                 f"analytic {analytic[k]:.8g} vs numeric {numeric[k]:.8g}")
    return True
