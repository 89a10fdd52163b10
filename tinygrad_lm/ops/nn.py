"""Neural-network ops, each fused into one forward/backward pair (the textbook math, in xp).

These are the reference implementations; kernels/ holds fast versions of the hot ones.
Normalizations and softmaxes work over the last axis unless an ``axis`` is given.
"""
import math

from ..backend import erf, scatter_add, xp_of
from ..tensor import Function


def _stable_shift(x, axis):
    """x - max(x) along axis; rows whose max is not finite (all -inf) are shifted by 0 instead."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    if not bool(xp.isfinite(m).all()):
        m = xp.where(xp.isfinite(m), m, 0).astype(x.dtype)
    return x - m


class Softmax(Function):
    def forward(self, x, axis):
        xp = xp_of(x)
        e = xp.exp(_stable_shift(x, axis))
        s = e.sum(axis=axis, keepdims=True)
        s[s == 0] = 1  # a fully masked row (all -inf) gives zeros, not NaN
        self.out, self.axis = e / s, axis
        return self.out

    def backward(self, g):  # dx = y * (g - sum(g * y))
        y = self.out
        return y * (g - (g * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def forward(self, x, axis):
        xp = xp_of(x)
        z = _stable_shift(x, axis)
        self.out, self.axis = z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True)), axis
        return self.out

    def backward(self, g):  # dx = g - softmax * sum(g)
        return g - xp_of(g).exp(self.out) * g.sum(axis=self.axis, keepdims=True)


class CrossEntropy(Function):
    """-log softmax(logits)[target], never forming a one-hot matrix. logits (..., C), targets (...)."""

    def forward(self, logits, targets, ignore_index, reduction):
        xp = xp_of(logits)
        C = logits.shape[-1]
        z = _stable_shift(logits.reshape(-1, C), -1)          # (N, C)
        t = targets.reshape(-1)
        valid = t != ignore_index
        t = xp.where(valid, t, 0)
        rows = xp.arange(t.shape[0])
        lse = xp.log(xp.exp(z).sum(axis=-1))                   # (N,)
        losses = (lse - z[rows, t]) * valid
        self.z, self.lse, self.t, self.rows, self.valid = z, lse, t, rows, valid
        self.shape, self.tshape, self.reduction = logits.shape, targets.shape, reduction
        self.count = max(int(valid.sum()), 1)  # mean over zero targets is 0, not NaN
        if reduction == "none":
            return losses.reshape(targets.shape)
        total = losses.sum()
        return total if reduction == "sum" else total / z.dtype.type(self.count)

    def backward(self, g):  # d loss / d logits = softmax - onehot(target), per valid row
        xp = xp_of(g)
        p = xp.exp(self.z - self.lse[:, None])
        p[self.rows, self.t] -= 1
        if self.reduction == "none":
            scale = g.reshape(-1) * self.valid
        else:
            scale = (g / g.dtype.type(self.count) if self.reduction == "mean" else g) * self.valid
        return (p * scale[:, None]).reshape(self.shape), None


class LayerNorm(Function):
    def forward(self, x, *params, eps, has_weight, has_bias):
        xp = xp_of(x)
        w = params[0] if has_weight else None
        b = params[-1] if has_bias else None
        xc = x - x.mean(axis=-1, keepdims=True)
        rstd = 1 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + eps)   # (..., 1)
        xhat = xc * rstd
        self.xhat, self.rstd, self.w, self.has_bias = xhat, rstd, w, has_bias
        y = xhat * w if w is not None else xhat
        return y + b if b is not None else y

    def backward(self, g):
        xhat, rstd, w = self.xhat, self.rstd, self.w
        C = g.shape[-1]
        gxhat = g * w if w is not None else g
        gx = rstd * (gxhat - gxhat.mean(axis=-1, keepdims=True)
                     - xhat * (gxhat * xhat).mean(axis=-1, keepdims=True))
        grads = [gx]
        if w is not None:
            grads.append((g * xhat).reshape(-1, C).sum(axis=0))
        if self.has_bias:
            grads.append(g.reshape(-1, C).sum(axis=0))
        return tuple(grads)


class RMSNorm(Function):
    def forward(self, x, *params, eps, has_weight):
        xp = xp_of(x)
        rstd = 1 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)     # (..., 1)
        self.xhat, self.rstd = x * rstd, rstd
        self.w = params[0] if has_weight else None
        return self.xhat * self.w if self.w is not None else self.xhat

    def backward(self, g):
        xhat, rstd, w = self.xhat, self.rstd, self.w
        gxhat = g * w if w is not None else g
        gx = rstd * (gxhat - xhat * (gxhat * xhat).mean(axis=-1, keepdims=True))
        if w is None:
            return gx
        return gx, (g * xhat).reshape(-1, g.shape[-1]).sum(axis=0)


_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


class Gelu(Function):
    """x * Phi(x) exactly (erf), or the tanh approximation of GPT-2 ("tanh")."""

    def forward(self, x, approximate):
        xp = xp_of(x)
        self.x, self.approximate = x, approximate
        if approximate == "tanh":
            self.t = xp.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
            return 0.5 * x * (1 + self.t)
        self.cdf = 0.5 * (1 + erf(x * _INV_SQRT_2))
        return x * self.cdf

    def backward(self, g):
        x = self.x
        if self.approximate == "tanh":
            t = self.t
            du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
            return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
        pdf = xp_of(x).exp(-0.5 * x * x) * _INV_SQRT_2PI
        return g * (self.cdf + x * pdf)


class Silu(Function):
    def forward(self, x):
        xp = xp_of(x)
        e = xp.exp(-xp.abs(x))
        self.s = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))  # sigmoid without overflow
        self.x = x
        return x * self.s

    def backward(self, g):  # d(x s(x)) = s (1 + x (1 - s))
        s = self.s
        return g * s * (1 + self.x * (1 - s))


class Embedding(Function):
    def forward(self, weight, ids):
        self.shape, self.ids = weight.shape, ids
        return weight[ids]

    def backward(self, g):  # rows used k times receive the sum of their k gradients
        gw = xp_of(g).zeros(self.shape, dtype=g.dtype)
        return scatter_add(gw, self.ids.reshape(-1), g.reshape(-1, self.shape[1]))


class Linear(Function):
    """y = x @ W.T + b with PyTorch's (out, in) weight layout, fused into one node."""

    def forward(self, x, w, *b):
        self.x, self.w, self.has_bias = x, w, bool(b)
        y = x @ w.T
        if b:
            y += b[0]
        return y

    def backward(self, g):
        x, w = self.x, self.w
        nx, nw = self.needs_input_grad[:2]
        g2 = g.reshape(-1, g.shape[-1])                               # (N, out)
        gx = g @ w if nx else None                                    # (..., in)
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if nw else None         # (out, in)
        if self.has_bias:
            return gx, gw, g2.sum(axis=0)
        return gx, gw
