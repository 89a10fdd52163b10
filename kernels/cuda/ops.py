"""Adapters from the op library's reference signatures to the Numba CUDA kernels.

Each entry of FAST has the same (forward, backward) signature as the reference pair it
replaces in tinygrad_lm/ops, and takes CuPy arrays (passed to the kernels zero-copy through
__cuda_array_interface__). Adapters only reshape to rows, make arrays contiguous, allocate the
outputs with the arrays' own module (``xp``) and launch. Under the CUDA simulator they take
NumPy arrays, which is how tests/cuda checks them against the references.

Not in FAST: ``matmul`` (the model's matmuls stay on cuBLAS; this one is for study and
benchmarks)."""
import math

from tinygrad_lm.backend import Impl, reference, xp_of

from . import adamw as _adamw
from . import attention as _attn
from . import cross_entropy as _ce
from . import embedding as _emb
from . import gelu as _gelu
from . import silu as _silu
from . import matmul as _mm
from . import norms as _norms
from . import softmax as _softmax
from ._launch import MAX_HEAD_DIM


def _check(op, sizes_fit):
    """Kernels index every array with the sizes of the first; on a GPU a mismatch would read or
    write out of bounds (the simulator catches that, a real GPU does not), so check on the host."""
    if not sizes_fit:
        raise ValueError(f"{op}: the arrays' shapes do not fit together")


def _same_shape(op, *arrays):
    _check(op, all(a.shape == arrays[0].shape for a in arrays[1:]))


def _c(a, dtype=None):
    return xp_of(a).ascontiguousarray(a, dtype=dtype)


def _rows(a):
    """(..., C) -> contiguous (N, C)."""
    return _c(a.reshape(math.prod(a.shape[:-1]), a.shape[-1]))


def _heads(a):
    """(..., T, D) -> contiguous (BH, T, D)."""
    return _c(a.reshape((math.prod(a.shape[:-2]),) + a.shape[-2:]))


def _ids(a, like):
    """Integer ids/targets as contiguous int64 on like's device (a host array is copied over)."""
    xp = xp_of(like)
    return xp.ascontiguousarray(xp.asarray(a), dtype=xp.int64)


def _param(p, x):
    """A weight or bias as a contiguous vector of x's dtype; a 1-element placeholder when None."""
    if p is None:
        return xp_of(x).empty(1, dtype=x.dtype)
    if p.shape != x.shape[-1:]:
        raise ValueError(f"norm: parameter of shape {p.shape} does not fit input of shape {x.shape}")
    return _c(p, x.dtype)


def softmax_forward(x):
    x2 = _rows(x)
    y = xp_of(x).empty_like(x2)
    _softmax.forward(x2, y)
    return y.reshape(x.shape)


def softmax_backward(y, g):
    _same_shape("softmax_backward", y, g)
    y2 = _rows(y)
    dx = xp_of(y).empty_like(y2)
    _softmax.backward(y2, _rows(g), dx)
    return dx.reshape(y.shape)


def cross_entropy_forward(z, t, ignore_index):
    xp = xp_of(z)
    z = _c(z)
    _check("cross_entropy", z.ndim == 2 and t.shape == z.shape[:1])
    losses = xp.empty(z.shape[0], dtype=z.dtype)
    lse = xp.empty(z.shape[0], dtype=z.dtype)
    _ce.forward(z, _ids(t, z), int(ignore_index), losses, lse)
    return losses, lse


def cross_entropy_backward(z, lse, t, ignore_index, row_scale):
    xp = xp_of(z)
    z = _c(z)
    _check("cross_entropy_backward", z.ndim == 2 and t.shape == lse.shape == row_scale.shape == z.shape[:1])
    dz = xp.empty_like(z)
    _ce.backward(z, _c(lse, z.dtype), _ids(t, z), int(ignore_index), _c(row_scale, z.dtype), dz)
    return dz


def layer_norm_forward(x, w, b, eps):
    xp, x2 = xp_of(x), _rows(x)
    N = x2.shape[0]
    y = xp.empty_like(x2)
    mean = xp.empty(N, dtype=x.dtype)
    rstd = xp.empty(N, dtype=x.dtype)
    _norms.layer_norm_forward(x2, _param(w, x), _param(b, x), x.dtype.type(eps), w is not None, b is not None,
                              y, mean, rstd)
    return y.reshape(x.shape), mean, rstd


def _param_grads(g2, x2, mean, rstd, centered):
    """Sums over rows of g * xhat and of g: partial rows from the kernel, added here."""
    xp = xp_of(x2)
    shape = (_norms.param_blocks(x2.shape[0]), x2.shape[1])
    pw = xp.zeros(shape, dtype=x2.dtype)
    pb = xp.zeros(shape, dtype=x2.dtype)
    _norms.param_grads(g2, x2, mean, rstd, centered, pw, pb)
    return pw.sum(axis=0), pb.sum(axis=0)


def layer_norm_backward(g, x, mean, rstd, w):
    _same_shape("layer_norm_backward", g, x)
    _check("layer_norm_backward", mean.size == rstd.size == math.prod(x.shape[:-1]))
    xp, x2, g2 = xp_of(x), _rows(x), _rows(g)
    mean, rstd = _c(mean, x.dtype), _c(rstd, x.dtype)
    dx = xp.empty_like(x2)
    _norms.layer_norm_backward(g2, x2, mean, rstd, _param(w, x), w is not None, dx)
    dw, db = _param_grads(g2, x2, mean, rstd, True)
    return dx.reshape(x.shape), dw, db


def rms_norm_forward(x, w, eps):
    xp, x2 = xp_of(x), _rows(x)
    y = xp.empty_like(x2)
    rstd = xp.empty(x2.shape[0], dtype=x.dtype)
    _norms.rms_norm_forward(x2, _param(w, x), x.dtype.type(eps), w is not None, y, rstd)
    return y.reshape(x.shape), rstd


def rms_norm_backward(g, x, rstd, w):
    _same_shape("rms_norm_backward", g, x)
    _check("rms_norm_backward", rstd.size == math.prod(x.shape[:-1]))
    xp, x2, g2 = xp_of(x), _rows(x), _rows(g)
    rstd = _c(rstd, x.dtype)
    dx = xp.empty_like(x2)
    _norms.rms_norm_backward(g2, x2, rstd, _param(w, x), w is not None, dx)
    dw, _ = _param_grads(g2, x2, rstd, rstd, False)  # (mean is unused when not centered)
    return dx.reshape(x.shape), dw


def gelu_forward(x, approximate):
    x1 = _c(x).reshape(-1)
    y = xp_of(x).empty_like(x1)
    _gelu.forward(x1, approximate == "tanh", y)
    return y.reshape(x.shape)


def gelu_backward(x, g, approximate):
    _same_shape("gelu_backward", x, g)
    x1 = _c(x).reshape(-1)
    dx = xp_of(x).empty_like(x1)
    _gelu.backward(x1, _c(g, x.dtype).reshape(-1), approximate == "tanh", dx)
    return dx.reshape(x.shape)


def silu_forward(x):
    x1 = _c(x).reshape(-1)
    y = xp_of(x).empty_like(x1)
    _silu.forward(x1, y)
    return y.reshape(x.shape)


def silu_backward(x, g):
    _same_shape("silu_backward", x, g)
    x1 = _c(x).reshape(-1)
    dx = xp_of(x).empty_like(x1)
    _silu.backward(x1, _c(g, x.dtype).reshape(-1), dx)
    return dx.reshape(x.shape)


def _attention_fits(q, k, v):
    """Head dims the flash kernels hold in per-thread arrays, one dtype throughout."""
    return (0 < q.shape[-1] <= MAX_HEAD_DIM and 0 < v.shape[-1] <= MAX_HEAD_DIM and q.dtype == k.dtype == v.dtype
            and q.shape[:-2] == k.shape[:-2] == v.shape[:-2] and q.shape[-1] == k.shape[-1]
            and k.shape[-2] == v.shape[-2])


def attention_forward(q, k, v, scale, causal):
    if not _attention_fits(q, k, v):
        return reference("attention").forward(q, k, v, scale, causal)
    xp = xp_of(q)
    q3, k3, v3 = _heads(q), _heads(k), _heads(v)
    out = xp.empty(q3.shape[:2] + v3.shape[2:], dtype=q.dtype)
    lse = xp.empty(q3.shape[:2], dtype=q.dtype)
    _attn.forward(q3, k3, v3, q.dtype.type(scale), bool(causal), out, lse)
    return out.reshape(q.shape[:-1] + v.shape[-1:]), lse.reshape(q.shape[:-1])


def attention_backward(q, k, v, out, lse, dout, scale, causal):
    if not _attention_fits(q, k, v):
        return reference("attention").backward(q, k, v, out, lse, dout, scale, causal)
    _check("attention_backward", out.shape == dout.shape == q.shape[:-1] + v.shape[-1:]
           and lse.size == math.prod(q.shape[:-1]))
    xp = xp_of(q)
    q3, k3, v3 = _heads(q), _heads(k), _heads(v)
    dq, dk, dv = xp.empty_like(q3), xp.empty_like(k3), xp.empty_like(v3)
    delta = xp.empty(q3.shape[:2], dtype=q.dtype)
    _attn.backward(q3, k3, v3, _c(_heads(out), q.dtype), _c(lse.reshape(q3.shape[:2]), q.dtype),
                   _c(_heads(dout), q.dtype), q.dtype.type(scale), bool(causal), delta, dq, dk, dv)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def embedding_backward(ids, g, num_embeddings):
    xp, g2 = xp_of(g), _rows(g)
    _check("embedding_backward", ids.size == g2.shape[0])
    dw = xp.zeros((num_embeddings, g.shape[-1]), dtype=g.dtype)
    _emb.backward(_ids(ids, g).reshape(-1), g2, dw)
    return dw


def adamw_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """In place on p, m, v (any shape, C-contiguous), same math as optim.adamw_update."""
    if not all(a.flags.c_contiguous for a in (p, g, m, v)):
        raise ValueError("fast adamw_update needs C-contiguous arrays")
    _same_shape("adamw_update", p, g, m, v)
    _adamw.step(p.reshape(-1), _c(g, p.dtype).reshape(-1), m.reshape(-1), v.reshape(-1), step, lr, beta1, beta2,
                eps, weight_decay)


def matmul(a, b):
    """a @ b with the tiled kernel: (M, K) @ (K, N) or batched (..., M, K) @ (..., K, N) (same batch)."""
    xp = xp_of(a)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2] or a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match")
    batch = a.shape[:-2]
    nb = math.prod(batch)
    a3 = _c(a.reshape((nb,) + a.shape[-2:]))
    b3 = _c(b.reshape((nb,) + b.shape[-2:]), a.dtype)
    c = xp.empty((a3.shape[0], a3.shape[1], b3.shape[2]), dtype=a.dtype)
    if a3.shape[2] == 0:
        c[...] = 0
    else:
        _mm.matmul(a3, b3, c)
    return c.reshape(batch + c.shape[1:])


FAST = {
    "softmax": Impl(softmax_forward, softmax_backward),
    "cross_entropy": Impl(cross_entropy_forward, cross_entropy_backward),
    "layer_norm": Impl(layer_norm_forward, layer_norm_backward),
    "rms_norm": Impl(rms_norm_forward, rms_norm_backward),
    "gelu": Impl(gelu_forward, gelu_backward),
    "silu": Impl(silu_forward, silu_backward),
    "attention": Impl(attention_forward, attention_backward),
    "embedding": Impl(None, embedding_backward),
    "adamw": Impl(adamw_update, None),
}
