"""Adapters from the op library's reference signatures to the Numba kernels.

Each entry of FAST has the same (forward, backward) signature as the reference pair it
replaces in tinygrad_lm/ops (REFERENCE there), so the op code calls whichever the kernel
switch selects. Adapters only reshape to rows and make arrays contiguous."""
import numba
import numpy as np

from tinygrad_lm.backend import Impl

from . import adamw as _adamw
from . import attention as _attn
from . import cross_entropy as _ce
from . import embedding as _emb
from . import gelu as _gelu
from . import norms as _norms
from . import quant as _quant
from . import silu as _silu
from . import softmax as _softmax


def _rows(a):
    """(..., C) -> contiguous (N, C) view or copy."""
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]))


def _heads4(a):
    """(..., T, D) -> (B, H, T, D), a view where the leading dims allow (the kernel takes any strides)."""
    if a.ndim == 4:
        return a
    if a.ndim < 4:
        return a.reshape((1,) * (4 - a.ndim) + a.shape)
    return a.reshape((-1,) + a.shape[-3:])


def softmax_forward(x):
    return _softmax.softmax_forward(_rows(x)).reshape(x.shape)


def softmax_backward(y, g):
    return _softmax.softmax_backward(_rows(y), _rows(g)).reshape(y.shape)


def cross_entropy_forward(z, t, ignore_index):
    return _ce.cross_entropy_forward(np.ascontiguousarray(z), np.ascontiguousarray(t, dtype=np.int64), ignore_index)


def cross_entropy_backward(z, lse, t, ignore_index, row_scale):
    return _ce.cross_entropy_backward(np.ascontiguousarray(z), lse, np.ascontiguousarray(t, dtype=np.int64),
                                      ignore_index, np.ascontiguousarray(row_scale, dtype=z.dtype))


def _param(p, C, dtype):
    return np.ascontiguousarray(p) if p is not None else np.empty(C, dtype)  # unused placeholder when None


def layer_norm_forward(x, w, b, eps):
    C = x.shape[-1]
    y, mean, rstd = _norms.layer_norm_forward(_rows(x), _param(w, C, x.dtype), _param(b, C, x.dtype), eps,
                                              w is not None, b is not None)
    return y.reshape(x.shape), mean, rstd


def layer_norm_backward(g, x, mean, rstd, w):
    C = x.shape[-1]
    dx, dw, db = _norms.layer_norm_backward(_rows(g), _rows(x), mean, rstd, _param(w, C, x.dtype), w is not None,
                                            numba.get_num_threads())
    return dx.reshape(x.shape), dw, db


def rms_norm_forward(x, w, eps):
    y, rstd = _norms.rms_norm_forward(_rows(x), _param(w, x.shape[-1], x.dtype), eps, w is not None)
    return y.reshape(x.shape), rstd


def rms_norm_backward(g, x, rstd, w):
    dx, dw = _norms.rms_norm_backward(_rows(g), _rows(x), rstd, _param(w, x.shape[-1], x.dtype), w is not None,
                                      numba.get_num_threads())
    return dx.reshape(x.shape), dw


def gelu_forward(x, approximate):
    return _gelu.gelu_forward(np.ascontiguousarray(x).reshape(-1), approximate == "tanh").reshape(x.shape)


def gelu_backward(x, g, approximate):
    flat = _gelu.gelu_backward(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(g).reshape(-1),
                               approximate == "tanh")
    return flat.reshape(x.shape)


def silu_forward(x):
    return _silu.silu_forward(np.ascontiguousarray(x).reshape(-1)).reshape(x.shape)


def silu_backward(x, g):
    return _silu.silu_backward(np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(g).reshape(-1)).reshape(x.shape)


def attention_forward(q, k, v, scale, causal):
    out, lse = _attn.attention_forward(_heads4(q), _heads4(k), _heads4(v), scale, causal)
    return out.reshape(q.shape[:-1] + v.shape[-1:]), lse.reshape(q.shape[:-1])


def attention_backward(q, k, v, out, lse, dout, scale, causal):
    q4 = _heads4(q)
    dq, dk, dv = _attn.attention_backward(q4, _heads4(k), _heads4(v), _heads4(out), lse.reshape(q4.shape[:-1]),
                                          _heads4(dout), scale, causal)
    return dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape)


def embedding_backward(ids, g, num_embeddings):
    return _emb.embedding_backward(np.ascontiguousarray(ids, dtype=np.int64).reshape(-1), _rows(g), num_embeddings)


def adamw_update(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay):
    """In place on p, m, v (any shape, C-contiguous), same math as optim.adamw_update."""
    if not (p.flags.c_contiguous and g.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
        raise ValueError("fast adamw_update needs C-contiguous arrays")
    _adamw.adamw_step(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1), lr, beta1, beta2, eps,
                      weight_decay, 1.0 - beta1 ** step, 1.0 - beta2 ** step)


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
    "quant_linear": Impl(_quant.quant_linear_forward, _quant.quant_linear_backward),
}
