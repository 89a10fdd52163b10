"""Neural-network ops, each fused into one forward/backward pair (the textbook math, in xp).

Hot ops (softmax, cross_entropy, layer_norm, rms_norm, gelu, attention, embedding) are written
as a reference (forward, backward) pair of plain functions on arrays: the textbook math, in
xp. Each pair is registered with the backend, and the op's Function calls whichever pair
``backend.implementation`` selects: this reference, or the fast kernel of kernels/ that has the
same signature (the switch: tinygrad_lm.use_kernels / TINYGRAD_LM_KERNELS).
"""
import math

from ..backend import erf, implementation, register_reference, scatter_add, xp_of
from ..tensor import Function


def _stable_shift(x, axis):
    """x - max(x) along axis; rows whose max is not finite (all -inf) are shifted by 0 instead."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    if not bool(xp.isfinite(m).all()):
        m = xp.where(xp.isfinite(m), m, 0).astype(x.dtype)
    return x - m


# ---- softmax (hot) ----------------------------------------------------------------------------

def softmax_forward(x):
    """Reference: softmax over the last axis; a row of all -inf gives zeros, not NaN."""
    xp = xp_of(x)
    e = xp.exp(_stable_shift(x, -1))
    s = e.sum(axis=-1, keepdims=True)
    s[s == 0] = 1
    return e / s


def softmax_backward(y, g):  # dx = y * (g - sum(g * y))
    return y * (g - (g * y).sum(axis=-1, keepdims=True))


register_reference("softmax", softmax_forward, softmax_backward)


class Softmax(Function):
    def forward(self, x, axis):
        xp = xp_of(x)
        x = xp.moveaxis(x, axis, -1)                       # kernels work on the last axis
        self.impl, self.axis = implementation("softmax", x), axis
        self.y = self.impl.forward(x)
        return xp.moveaxis(self.y, -1, axis)

    def backward(self, g):
        xp = xp_of(g)
        return xp.moveaxis(self.impl.backward(self.y, xp.moveaxis(g, self.axis, -1)), -1, self.axis)


class LogSoftmax(Function):
    def forward(self, x, axis):
        xp = xp_of(x)
        z = _stable_shift(x, axis)
        self.out, self.axis = z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True)), axis
        return self.out

    def backward(self, g):  # dx = g - softmax * sum(g)
        return g - xp_of(g).exp(self.out) * g.sum(axis=self.axis, keepdims=True)


# ---- cross-entropy (hot) --------------------------------------------------------------------

def cross_entropy_forward(z, t, ignore_index):
    """Reference: z (N, C) logits, t (N,) targets -> (losses (N,), lse (N,)); ignored rows lose 0."""
    xp = xp_of(z)
    valid = t != ignore_index
    rows = xp.arange(t.shape[0])
    m = z.max(axis=-1)
    m = xp.where(xp.isfinite(m), m, 0).astype(z.dtype)
    lse = m + xp.log(xp.exp(z - m[:, None]).sum(axis=-1))
    picked = z[rows, xp.where(valid, t, 0)]
    return xp.where(valid, lse - picked, 0).astype(z.dtype), lse   # where, not * valid: inf * 0 is NaN


def cross_entropy_backward(z, lse, t, ignore_index, row_scale):
    """d loss_i / d z_i = (softmax(z_i) - onehot(t_i)) * row_scale_i, zero for ignored rows."""
    xp = xp_of(z)
    valid = t != ignore_index
    p = xp.exp(z - lse[:, None])
    p[xp.arange(t.shape[0]), xp.where(valid, t, 0)] -= 1
    return p * (row_scale * valid)[:, None]


register_reference("cross_entropy", cross_entropy_forward, cross_entropy_backward)


class CrossEntropy(Function):
    """-log softmax(logits)[target], never forming a one-hot matrix. logits (..., C), targets (...)."""

    def forward(self, logits, targets, ignore_index, reduction):
        C = logits.shape[-1]
        z, t = logits.reshape(-1, C), targets.reshape(-1)                # (N, C), (N,)
        self.impl = implementation("cross_entropy", z)
        losses, self.lse = self.impl.forward(z, t, ignore_index)
        self.z, self.t, self.ignore_index = z, t, ignore_index
        self.shape, self.reduction = logits.shape, reduction
        self.count = max(int((t != ignore_index).sum()), 1)  # mean over zero targets is 0, not NaN
        if reduction == "none":
            return losses.reshape(targets.shape)
        total = losses.sum()
        return total if reduction == "sum" else total / z.dtype.type(self.count)

    def backward(self, g):
        xp = xp_of(g)
        if self.reduction == "none":
            row_scale = g.reshape(-1)
        else:
            scale = g / g.dtype.type(self.count) if self.reduction == "mean" else g
            row_scale = xp.broadcast_to(scale, self.t.shape)
        dz = self.impl.backward(self.z, self.lse, self.t, self.ignore_index, row_scale)
        return dz.reshape(self.shape), None


# ---- layer norm and RMS norm (hot) -------------------------------------------------------------

def layer_norm_forward(x, w, b, eps):
    """Reference: (x - mean) * rstd * w + b over the last axis -> (y, mean (N,), rstd (N,))."""
    xp = xp_of(x)
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    rstd = 1 / xp.sqrt((xc * xc).mean(axis=-1, keepdims=True) + x.dtype.type(eps))   # (..., 1)
    y = xc * rstd
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y, mean.reshape(-1), rstd.reshape(-1)


def layer_norm_backward(g, x, mean, rstd, w):
    """-> dx, dw, db; with xhat = (x - mean) * rstd, dx = rstd (gx - mean(gx) - xhat mean(gx xhat))."""
    C = x.shape[-1]
    rstd = rstd.reshape(x.shape[:-1] + (1,))
    xhat = (x - mean.reshape(rstd.shape)) * rstd
    gxhat = g * w if w is not None else g
    dx = rstd * (gxhat - gxhat.mean(axis=-1, keepdims=True) - xhat * (gxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, (g * xhat).reshape(-1, C).sum(axis=0), g.reshape(-1, C).sum(axis=0)


def rms_norm_forward(x, w, eps):
    """Reference: x * rstd * w with rstd = 1 / sqrt(mean(x^2) + eps) -> (y, rstd (N,))."""
    rstd = 1 / xp_of(x).sqrt((x * x).mean(axis=-1, keepdims=True) + x.dtype.type(eps))  # (..., 1)
    y = x * rstd
    return (y * w if w is not None else y), rstd.reshape(-1)


def rms_norm_backward(g, x, rstd, w):
    """-> dx, dw; dx = rstd (gx - xhat mean(gx xhat))."""
    rstd = rstd.reshape(x.shape[:-1] + (1,))
    xhat = x * rstd
    gxhat = g * w if w is not None else g
    dx = rstd * (gxhat - xhat * (gxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, (g * xhat).reshape(-1, x.shape[-1]).sum(axis=0)


register_reference("layer_norm", layer_norm_forward, layer_norm_backward)
register_reference("rms_norm", rms_norm_forward, rms_norm_backward)


class LayerNorm(Function):
    def forward(self, x, *params, eps, has_weight, has_bias):
        w = params[0] if has_weight else None
        b = params[-1] if has_bias else None
        self.impl = implementation("layer_norm", x)
        y, self.mean, self.rstd = self.impl.forward(x, w, b, eps)
        self.x, self.w, self.has_bias = x, w, has_bias
        return y

    def backward(self, g):
        dx, dw, db = self.impl.backward(g, self.x, self.mean, self.rstd, self.w)
        return (dx,) + ((dw,) if self.w is not None else ()) + ((db,) if self.has_bias else ())


class RMSNorm(Function):
    def forward(self, x, *params, eps, has_weight):
        self.w = params[0] if has_weight else None
        self.impl = implementation("rms_norm", x)
        y, self.rstd = self.impl.forward(x, self.w, eps)
        self.x = x
        return y

    def backward(self, g):
        dx, dw = self.impl.backward(g, self.x, self.rstd, self.w)
        return dx if self.w is None else (dx, dw)


# ---- GELU (hot) ---------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2 = 1 / math.sqrt(2)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def gelu_forward(x, approximate):
    """Reference: x * Phi(x) exactly (erf), or GPT-2's tanh approximation ("tanh")."""
    if approximate == "tanh":
        return 0.5 * x * (1 + xp_of(x).tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
    return x * (0.5 * (1 + erf(x * _INV_SQRT_2)))


def gelu_backward(x, g, approximate):
    if approximate == "tanh":
        t = xp_of(x).tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x))
        du = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x)
        return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du)
    cdf = 0.5 * (1 + erf(x * _INV_SQRT_2))
    pdf = xp_of(x).exp(-0.5 * x * x) * _INV_SQRT_2PI                   # d Phi / dx
    return g * (cdf + x * pdf)


register_reference("gelu", gelu_forward, gelu_backward)


class Gelu(Function):
    def forward(self, x, approximate):
        self.impl, self.x, self.approximate = implementation("gelu", x), x, approximate
        return self.impl.forward(x, approximate)

    def backward(self, g):
        return self.impl.backward(self.x, g, self.approximate)


# ---- attention (hot) ----------------------------------------------------------------------------

def attention_forward(q, k, v, scale, causal):
    """Reference: softmax(q k^T * scale [causal]) v -> (out (..., Tq, Dv), lse (..., Tq)).

    The probabilities are not kept: the backward recomputes them from lse (the logsumexp of
    each row), so nothing of size Tq x Tk outlives the call."""
    xp = xp_of(q)
    s = (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale)                   # (..., Tq, Tk)
    if causal:
        s = xp.where(causal_mask(q.shape[-2], k.shape[-2], xp), s, -xp.inf)
    m = s.max(axis=-1, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0).astype(s.dtype)
    p = xp.exp(s - m)
    total = p.sum(axis=-1, keepdims=True)
    out = (p / xp.where(total == 0, 1, total)) @ v                       # (..., Tq, Dv)
    return out, (m + xp.log(total))[..., 0]


def attention_backward(q, k, v, out, lse, dout, scale, causal):
    """-> dq, dk, dv, with p recomputed from lse: ds = p * (dout v^T - rowsum(dout * out))."""
    xp = xp_of(q)
    s = (q @ k.swapaxes(-1, -2)) * q.dtype.type(scale)
    if causal:
        s = xp.where(causal_mask(q.shape[-2], k.shape[-2], xp), s, -xp.inf)
    lse = lse[..., None]
    p = xp.where(xp.isfinite(lse), xp.exp(s - xp.where(xp.isfinite(lse), lse, 0)), 0)   # (..., Tq, Tk)
    dv = p.swapaxes(-1, -2) @ dout
    ds = p * (dout @ v.swapaxes(-1, -2) - (dout * out).sum(axis=-1, keepdims=True)) * q.dtype.type(scale)
    return ds @ k, ds.swapaxes(-1, -2) @ q, dv


def causal_mask(tq: int, tk: int, xp):
    """(tq, tk) bool, True where query i may see key j: j <= i + tk - tq (aligned bottom-right,
    so a decode step's single query sees every cached key)."""
    return xp.tril(xp.ones((tq, tk), dtype=bool), k=tk - tq)


register_reference("attention", attention_forward, attention_backward)


class Attention(Function):
    """Fused scaled dot-product attention (no mask other than causal). q, k, v (..., T, D)."""

    def forward(self, q, k, v, scale, causal):
        self.impl = implementation("attention", q)
        out, self.lse = self.impl.forward(q, k, v, scale, causal)
        self.saved = q, k, v, out
        self.scale, self.causal = scale, causal
        return out

    def backward(self, g):
        q, k, v, out = self.saved
        return self.impl.backward(q, k, v, out, self.lse, g, self.scale, self.causal)


def rotate_pairs(x, pairing: str):
    """RoPE's 90-degree turn of each rotated pair: "half" pairs feature i with i + hs/2 and gives
    (-x2, x1); "adjacent" pairs 2i with 2i+1 and gives (-x_{2i+1}, x_{2i}). Antisymmetric: its
    transpose is its negative, which is all the backward needs."""
    out = xp_of(x).empty_like(x)
    if pairing == "half":
        h = x.shape[-1] // 2
        out[..., :h] = -x[..., h:]
        out[..., h:] = x[..., :h]
    else:
        out[..., 0::2] = -x[..., 1::2]
        out[..., 1::2] = x[..., 0::2]
    return out


class Rope(Function):
    """Rotary position embedding y = x cos + rotate(x) sin as one node (about 8 small ops otherwise:
    slices, a negation, a concatenation, two products and a sum, per call, per layer, q and k).
    cos and sin (T, hs) are constants. y = R x with R orthogonal, so dx = R^T g = g cos - rotate(g sin)."""

    def forward(self, x, cos, sin, pairing):
        self.cos, self.sin, self.pairing = cos, sin, pairing
        return x * cos + rotate_pairs(x, pairing) * sin

    def backward(self, g):
        return g * self.cos - rotate_pairs(g * self.sin, self.pairing)


# ---- SiLU (hot: SwiGLU's gate) ----------------------------------------------------------------

def _sigmoid(x):
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))  # without overflow


def silu_forward(x):
    """Reference: x * sigmoid(x)."""
    return x * _sigmoid(x)


def silu_backward(x, g):  # d(x s(x)) = s (1 + x (1 - s))
    s = _sigmoid(x)
    return g * s * (1 + x * (1 - s))


register_reference("silu", silu_forward, silu_backward)


class Silu(Function):
    def forward(self, x):
        self.impl, self.x = implementation("silu", x), x
        return self.impl.forward(x)

    def backward(self, g):
        return self.impl.backward(self.x, g)


class SwiGLU(Function):
    """silu(gate) * up with gate and up the two halves of h's last axis (LLaMA's MLP), as one node.

    Only h is kept for backward (silu(gate) is recomputed there: one cheap pass) instead of gate,
    up and silu(gate) on three nodes: an (N, hidden) array less per layer on the tape (SmolLM2,
    512 tokens: 94 MB over 30 layers). dgate = silu'(gate) * up * g, dup = silu(gate) * g."""

    def forward(self, h):
        H = h.shape[-1] // 2
        self.impl, self.h = implementation("silu", h), h
        return self.impl.forward(h[..., :H]) * h[..., H:]

    def backward(self, g):
        h, H = self.h, self.h.shape[-1] // 2
        gate, up = h[..., :H], h[..., H:]
        dh = xp_of(g).empty_like(h)
        dh[..., :H] = self.impl.backward(gate, g * up)
        dh[..., H:] = self.impl.forward(gate) * g
        return dh


def embedding_backward(ids, g, num_embeddings):
    """Reference: rows used k times receive the sum of their k gradients (scatter-add)."""
    gw = xp_of(g).zeros((num_embeddings, g.shape[-1]), dtype=g.dtype)
    return scatter_add(gw, ids.reshape(-1), g.reshape(-1, g.shape[-1]))


register_reference("embedding", None, embedding_backward)


class Embedding(Function):
    def forward(self, weight, ids):
        self.shape, self.ids = weight.shape, ids
        return weight[ids]

    def backward(self, g):
        self.impl = implementation("embedding", g)   # kept, as the other hot ops keep theirs: the profiler reads it
        return self.impl.backward(self.ids, g, self.shape[0])


class Linear(Function):
    """y = x @ W.T + b with PyTorch's (out, in) weight layout, fused into one node.

    Leading dimensions are flattened into rows first: one (N, in) @ (in, out) BLAS call is
    ~1.5x faster than NumPy's loop of per-batch calls on a (B, T, in) input (measured at the
    tiny GPT's shapes)."""

    def forward(self, x, w, *b):
        # a frozen weight (LoRA's base, a quantized base) needs no weight gradient, so x is not kept
        self.x = x if self.needs_input_grad[1] else None
        self.x_shape, self.w, self.has_bias = x.shape, w, bool(b)
        y = x.reshape(-1, x.shape[-1]) @ w.T                          # (N, out)
        if b:
            y += b[0]
        return y.reshape(x.shape[:-1] + (w.shape[0],))

    def backward(self, g):
        x, w = self.x, self.w
        nx, nw = self.needs_input_grad[:2]
        g2 = g.reshape(-1, g.shape[-1])                               # (N, out)
        gx = (g2 @ w).reshape(self.x_shape) if nx else None           # (..., in)
        gw = g2.T @ x.reshape(-1, x.shape[-1]) if nw else None         # (out, in)
        if self.has_bias:
            return gx, gw, (g2.sum(axis=0) if self.needs_input_grad[2] else None)
        return gx, gw
