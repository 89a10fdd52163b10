"""Quantized weights (int8, NF4) and the linear op over them, y = x @ dequantize(W).T + b.

Two formats of a Linear weight W (out_features, in_features):

* int8: one float32 scale per output row, s = absmax(row) / 127, codes q = round(w / s) in
  [-127, 127]; w ~ q * s, off by at most s / 2 (round to nearest). A row of zeros gets s = 1
  (so does a block below float32's range, whose values then quantize to 0).
* nf4 (QLoRA, Dettmers et al. 2023): each row is cut into blocks of ``block_size`` consecutive
  values (the last block of a row is padded with zeros; the padding is never read back), each
  block keeps its absmax as a float32 scale, and each value becomes the index (4 bits) of the
  NormalFloat level nearest to w / absmax. Two indices per byte, the first value of a pair in
  the high nibble (bitsandbytes' order). w ~ NF4_LEVELS[i] * absmax, off by at most absmax times
  half the widest gap between adjacent levels (0.152, between -1 and -0.696).

The op keeps only the QuantizedWeight on the autograd tape, never a float copy of W: the forward
dequantizes, multiplies and drops the float W; the backward (gx = g @ W) dequantizes again. W is
frozen (it gets no gradient), but x does, so a QLoRA model backpropagates through its quantized
layers into the adapters of the layers below. The reference pair below is the textbook math in
xp (NumPy or CuPy); kernels/cpu/quant.py has the fused Numba version of the same signature.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import device_of, implementation, register_reference, to_device, to_numpy, xp_of
from ..tensor import Function, Tensor

QUANT_KINDS = ("int8", "nf4")

# The 16 NormalFloat4 levels as bitsandbytes defines them (functional.get_4bit_type("nf4")): the
# quantiles of N(0, 1) with equal area per bin, normalised to [-1, 1], with an exact 0. They are
# float32 values; the float64 literals below are their exact decimal spellings.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
NF4_LEVELS.flags.writeable = False
# Decision thresholds: a normalised value v gets the number of midpoints strictly below it as its
# index, so a value exactly on a midpoint takes the lower level (bitsandbytes' `x > mid` tests).
_NF4_MIDPOINTS = (NF4_LEVELS[:-1].astype(np.float64) + NF4_LEVELS[1:]) / 2
_CHUNK = 1 << 20   # quantize this many values at a time (bounds the float64 temporaries)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True, eq=False)   # eq=False: arrays have no truth value; identity is equality
class QuantizedWeight:
    """A quantized (out_features, in_features) weight.

    int8: data int8 (out, in), scales float32 (out,).
    nf4:  data uint8 (out, nblocks * block_size // 2), two 4-bit level indices per byte (the
          first in the high nibble); scales float32 (out, nblocks), each block's absmax.
    block_size: values per NF4 block along in_features (int8 keeps it but has one scale per row)."""
    kind: str
    shape: tuple
    data: object
    scales: object
    block_size: int = 64

    @property
    def nbytes(self) -> int:
        """Bytes the quantized data and its scales take."""
        return int(self.data.nbytes + self.scales.nbytes)

    @property
    def device(self) -> str:
        return device_of(self.data)

    def to(self, device: str) -> "QuantizedWeight":
        """The same weight with its arrays on ``device`` (self if they are already there)."""
        if self.device == device:
            return self
        return QuantizedWeight(self.kind, self.shape, to_device(self.data, device), to_device(self.scales, device),
                               self.block_size)

    def __repr__(self):
        block = f", block_size={self.block_size}" if self.kind == "nf4" else ""
        return f"QuantizedWeight(kind={self.kind!r}, shape={self.shape}{block}, nbytes={self.nbytes})"


def _check_kind(kind, block_size):
    if kind not in QUANT_KINDS:
        raise ValueError(f"unknown quantization kind {kind!r}: expected one of {QUANT_KINDS}")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0 \
            or block_size % 2:
        raise ValueError(f"quantize: block_size must be a positive even integer, got {block_size!r}")


def quantize(w, kind: str, block_size: int = 64) -> QuantizedWeight:
    """Quantize a 2-D float weight (out_features, in_features) to ``kind`` ("int8" or "nf4").

    Accepts a NumPy or CuPy array or a Tensor; the result lives on the host (QuantizedWeight.to
    moves it). Raises ValueError/TypeError naming the problem: an unknown kind, a block_size that
    is not a positive even integer, a weight that is not 2-D, not float, empty, or not finite."""
    _check_kind(kind, block_size)
    w = to_numpy(w.data if isinstance(w, Tensor) else w)
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"quantize: weight must be 2-D (out_features, in_features), got shape {w.shape}")
    if w.dtype.kind != "f":
        raise TypeError(f"quantize: weight must be a float array, got dtype {w.dtype}")
    if 0 in w.shape:
        raise ValueError(f"quantize: weight has an empty axis, shape {w.shape}")
    out_f, in_f = w.shape
    rows = max(1, _CHUNK // in_f)
    if kind == "int8":
        data, scales = np.empty((out_f, in_f), np.int8), np.empty(out_f, np.float32)
    else:
        nb = -(-in_f // block_size)
        data, scales = np.empty((out_f, nb * block_size // 2), np.uint8), np.empty((out_f, nb), np.float32)
    for r0 in range(0, out_f, rows):
        chunk = w[r0:r0 + rows].astype(np.float64)
        if not np.isfinite(chunk).all():
            r, c = np.argwhere(~np.isfinite(chunk))[0]
            raise ValueError(f"quantize: weight contains NaN or inf (first at row {r0 + r}, column {c})")
        if np.abs(chunk).max() > _FLOAT32_MAX:
            r, c = np.argwhere(np.abs(chunk) > _FLOAT32_MAX)[0]
            raise ValueError(f"quantize: weight value {chunk[r, c]:g} at row {r0 + r}, column {c} is beyond "
                             f"float32's range (the scales are float32)")
        if kind == "int8":
            data[r0:r0 + rows], scales[r0:r0 + rows] = _int8_rows(chunk)
        else:
            data[r0:r0 + rows], scales[r0:r0 + rows] = _nf4_rows(chunk, block_size)
    return QuantizedWeight(kind, (out_f, in_f), data, scales, int(block_size))


def _float32_scales(scale):
    """float64 scales -> float32; a scale that is 0 in float32 (a row or block of zeros, or values
    below float32's range) becomes 1, so its values quantize to 0 with no division by zero."""
    scale = scale.astype(np.float32)
    scale[scale == 0] = 1
    return scale


def _int8_rows(w):
    """float64 rows -> int8 codes, float32 scales (absmax / 127; 1 for a row of zeros)."""
    scale = _float32_scales(np.abs(w).max(axis=1) / 127)
    q = np.clip(np.rint(w / scale.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _nf4_rows(w, block_size):
    """float64 rows -> packed NF4 indices (r, nb * block_size / 2), float32 absmax per block (r, nb)."""
    r, n = w.shape
    nb = -(-n // block_size)
    padded = np.zeros((r, nb * block_size))
    padded[:, :n] = w
    blocks = padded.reshape(r, nb, block_size)
    scale = _float32_scales(np.abs(blocks).max(axis=2))
    normalised = blocks / scale.astype(np.float64)[:, :, None]
    idx = np.zeros(normalised.shape, np.uint8)
    for mid in _NF4_MIDPOINTS:             # 15 comparisons: ~4x faster than np.searchsorted here
        idx += normalised > mid
    idx = idx.reshape(r, -1)
    return (idx[:, 0::2] << 4) | idx[:, 1::2], scale


def dequantize(qw: QuantizedWeight, dtype=np.float32):
    """The float weight (out_features, in_features) in ``dtype``, on the device of qw's arrays."""
    xp = xp_of(qw.data)
    dtype = np.dtype(dtype)
    out_f, in_f = qw.shape
    if qw.kind == "int8":
        return qw.data.astype(dtype) * qw.scales.astype(dtype)[:, None]
    if qw.kind != "nf4":
        raise ValueError(f"unknown quantization kind {qw.kind!r}: expected one of {QUANT_KINDS}")
    idx = xp.empty((out_f, 2 * qw.data.shape[1]), np.uint8)
    idx[:, 0::2] = qw.data >> 4
    idx[:, 1::2] = qw.data & 15
    w = xp.asarray(NF4_LEVELS).astype(dtype)[idx].reshape(out_f, -1, qw.block_size)
    w *= qw.scales.astype(dtype)[:, :, None]
    return xp.ascontiguousarray(w.reshape(out_f, -1)[:, :in_f])             # padding dropped


# ---- the op: y = x @ dequantize(W).T + b ----------------------------------------------------

def quant_linear_forward(x, qw, b):
    """Reference: x (..., in) -> (..., out); leading dims flattened into rows, one matmul."""
    w = dequantize(qw, x.dtype)                                               # (out, in)
    y = x.reshape(-1, x.shape[-1]) @ w.T                                      # (N, out)
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (qw.shape[0],))


def quant_linear_backward(g, qw):
    """Reference: gx = g @ W with W dequantized again (nothing of W's size was kept)."""
    w = dequantize(qw, g.dtype)
    return (g.reshape(-1, g.shape[-1]) @ w).reshape(g.shape[:-1] + (qw.shape[1],))


register_reference("quant_linear", quant_linear_forward, quant_linear_backward)


class QuantLinear(Function):
    """y = x @ W.T + b for a frozen quantized W. Inputs: x, and b when there is one; the
    QuantizedWeight is a constant (keyword). b gets a gradient only if it asks for one."""

    fresh_grads = True   # gx comes from a matmul, gb from a sum: new arrays, the engine may add into them

    def forward(self, x, *b, qweight):
        self.impl, self.qweight, self.has_bias = implementation("quant_linear", x), qweight, bool(b)
        return self.impl.forward(x, qweight, b[0] if b else None)

    def backward(self, g):
        gx = self.impl.backward(g, self.qweight) if self.needs_input_grad[0] else None
        if not self.has_bias:
            return gx
        gb = g.reshape(-1, g.shape[-1]).sum(axis=0) if self.needs_input_grad[1] else None
        return gx, gb


def quant_linear(x: Tensor, qweight: QuantizedWeight, bias: Tensor | None = None) -> Tensor:
    """x @ dequantize(qweight).T + bias, differentiable in x (and bias); qweight is frozen."""
    if not isinstance(qweight, QuantizedWeight):
        raise TypeError(f"quant_linear: qweight must be a QuantizedWeight, got {type(qweight).__name__}")
    if x.shape[-1:] != (qweight.shape[1],):
        raise ValueError(f"quant_linear: input of shape {x.shape} does not fit weight of shape {qweight.shape} "
                         f"(weight is (out_features, in_features); input's last axis must be in_features)")
    if bias is not None and bias.shape != (qweight.shape[0],):
        raise ValueError(f"quant_linear: bias has shape {bias.shape}, expected ({qweight.shape[0]},)")
    if qweight.device != x.device:
        raise ValueError(f"quant_linear: input is on {x.device} but the quantized weight is on {qweight.device} "
                         f"(move it with qweight.to({x.device!r}))")
    return QuantLinear.apply(x, *([bias] if bias is not None else []), qweight=qweight)
