"""Linear layers over int8 / NF4 weights: a fused few-row forward and a parallel dequantize.

Formats (tinygrad_lm/ops/quant.py): int8 codes (out, in) with a float32 scale per row; NF4 bytes
(out, nb * bs / 2) with two level indices per byte (first value in the high nibble) and a float32
absmax per block of bs values. ``pairs`` (512,) maps a byte to its two levels in the compute
dtype, so one load decodes two weights.

Forward, few rows (decode: N <= FUSED_MAX_ROWS): the kernels read the packed weight directly
and never build a float copy of W. NF4 decodes one output row at a time into a private buffer
(L1) and dots it with every x row; int8 converts on the fly and applies the row's scale once.
Forward with more rows, and every backward (gx = g @ W): dequantize W in parallel, in chunks of
output rows (a huge layer never needs a whole float copy at once), and let BLAS multiply. A fused
backward (threads owning column slices of gx) was measured 1.5-20x slower than this, at every N.

Measured on the project's 2-core AMD EPYC (Zen 4; the other core partly busy), float32, ms per
call (min of repeats over 1 s). ref = NumPy dequantize + matmul (ops/quant.py), fast = this
file, f32 = plain x @ W.T / g @ W with the float32 weight, cache-hot in the loop (its best case:
in a model W comes from memory). Shapes are SmolLM2-135M's qkv, MLP up+gate and MLP down:

                                   forward                   backward (gx)
    kind  W (out, in)    N      f32     ref    fast        f32     ref    fast
    int8  ( 960,  576)   1    0.023   0.179   0.023      0.022   0.182   0.065
    int8  ( 960,  576)   8    0.145   0.302   0.084      0.119   0.261   0.162
    int8  ( 960,  576) 512    4.90    5.05    5.02       4.96    5.07    5.05
    nf4   ( 960,  576)   1    0.023   0.823   0.091      0.021   0.845   0.140
    nf4   ( 960,  576)   8    0.142   0.962   0.182      0.119   0.948   0.248
    nf4   ( 960,  576) 512    5.15    6.08    5.55       4.96    6.05    5.19
    int8  (3072,  576)   1    0.072   0.593   0.038      0.068   0.595   0.175
    int8  (3072,  576)   8    0.463   1.187   0.233      0.447   1.143   0.589
    int8  (3072,  576) 512   17.2    18.7    18.3       17.5    18.2    17.4
    nf4   (3072,  576)   1    0.075   3.212   0.310      0.069   3.024   0.358
    nf4   (3072,  576)   8    0.444   3.238   0.523      0.417   3.320   0.722
    nf4   (3072,  576) 512   16.2    19.3    17.4       16.7    19.8    16.8
    int8  ( 576, 1536)   1    0.035   0.259   0.019      0.040   0.267   0.111
    int8  ( 576, 1536)   8    0.233   0.457   0.142      0.200   0.431   0.264
    int8  ( 576, 1536) 512    8.23    8.61    8.39       8.15    8.47    8.52
    nf4   ( 576, 1536)   1    0.038   1.352   0.279      0.038   1.353   0.216
    nf4   ( 576, 1536)   8    0.237   1.567   0.223      0.190   1.500   0.382
    nf4   ( 576, 1536) 512    7.99    9.78    8.70       8.24    9.63    8.22

So, at 1 and 8 rows, fast vs reference: NF4 5-10x forward, 4-8x backward; int8 3-15x forward,
1.6-3.4x backward. At 512 rows both are a dequantize plus BLAS, the fast one within 9% of float32. NF4 decoding costs ~0.25 ns
per weight per core (a byte-pair table lookup; Numba does not vectorize it), which is why a
cache-hot float32 GEMV still wins at N = 1; int8's conversion vectorizes and beats it.
"""
import numpy as np
from numba import njit, prange

from ._jit import OPTIONS, kernel
from ._math import like

FUSED_MAX_ROWS = 8          # up to this many rows of x: fused kernels; more: dequantize + BLAS
CHUNK_ELEMENTS = 1 << 22    # dequantize at most this many weights at a time (16 MB in float32)


def nf4_pairs(levels, dtype):
    """(512,): entries 2b and 2b + 1 are the levels of byte b's high and low nibble, in ``dtype``.
    (Flat and indexed with a machine-size int: ~10% faster decoding than a (256, 2) table.)"""
    b = np.arange(256)
    return np.stack([levels[b >> 4], levels[b & 15]], axis=1).astype(dtype).reshape(-1)


@njit(**OPTIONS)
def _nf4_row(row, scales, pairs, block_size, out):
    """Decode one packed row into out (nb * block_size values, padding included), scaled."""
    half = block_size // 2
    for b in range(scales.shape[0]):
        s = scales[b]
        for p in range(b * half, (b + 1) * half):
            j = 2 * np.intp(row[p])
            out[2 * p] = pairs[j] * s
            out[2 * p + 1] = pairs[j + 1] * s


# ---- dequantize (output rows o0:o1) ----------------------------------------------------------

@kernel
def nf4_dequantize(data, scales, pairs, o0, o1, block_size):
    """Rows o0:o1 of W as (o1 - o0, nb * block_size) in pairs' dtype (padding included)."""
    w = np.empty((o1 - o0, scales.shape[1] * block_size), dtype=pairs.dtype)
    for o in prange(o0, o1):
        _nf4_row(data[o], scales[o], pairs, block_size, w[o - o0])
    return w


@kernel
def int8_dequantize(data, scales, o0, w):
    """Rows o0:o0 + len(w) of W written into w (rows, in), in w's dtype; returns w."""
    for r in prange(w.shape[0]):
        s = like(w, scales[o0 + r])
        for k in range(data.shape[1]):
            w[r, k] = like(w, data[o0 + r, k]) * s      # int8 * float32 would round to float32
    return w


# ---- few rows: fused forward y = x @ W.T --------------------------------------------------------

@kernel(parallel_from=1 << 16)
def nf4_matmul_t(data, scales, pairs, x, block_size):
    """y (N, out) = x (N, in) @ W.T for NF4 W. Rows of W are split in chunks, one decode
    buffer (a padded row) per chunk."""
    out_f, N, n_in = data.shape[0], x.shape[0], x.shape[1]
    y = np.empty((N, out_f), dtype=x.dtype)
    nchunks = min(out_f, 16)
    per = (out_f + nchunks - 1) // nchunks
    buf = np.empty((nchunks, scales.shape[1] * block_size), dtype=x.dtype)
    for c in prange(nchunks):
        w = buf[c]
        for o in range(c * per, min(out_f, (c + 1) * per)):
            _nf4_row(data[o], scales[o], pairs, block_size, w)
            for n in range(N):
                xr = x[n]
                acc = like(x, 0.0)
                for k in range(n_in):
                    acc += xr[k] * w[k]
                y[n, o] = acc
    return y


@kernel(parallel_from=1 << 18)
def int8_matmul_t(data, scales, x):
    """y (N, out) = x (N, in) @ W.T for int8 W: the row's scale is applied once to its dot product."""
    out_f, N, n_in = data.shape[0], x.shape[0], x.shape[1]
    y = np.empty((N, out_f), dtype=x.dtype)
    for o in prange(out_f):
        row = data[o]
        for n in range(N):
            xr = x[n]
            acc = like(x, 0.0)
            for k in range(n_in):
                acc += xr[k] * like(x, row[k])
            y[n, o] = acc * like(x, scales[o])
    return y


# ---- the op's (forward, backward) pair, same signature as the reference in ops/quant.py -----------

_PAIRS: dict = {}


def _pairs(dtype):
    """The byte -> two levels table in ``dtype`` (built once per dtype)."""
    if dtype not in _PAIRS:
        from tinygrad_lm.ops.quant import NF4_LEVELS
        _PAIRS[dtype] = nf4_pairs(NF4_LEVELS, dtype)
    return _PAIRS[dtype]


def _rows(a):
    return np.ascontiguousarray(a.reshape(-1, a.shape[-1]))


def dequantized_chunks(qw, dtype):
    """(o0, W[o0:o0 + rows] as (rows, in) in dtype) for consecutive chunks of output rows."""
    out_f, in_f = qw.shape
    width = qw.scales.shape[1] * qw.block_size if qw.kind == "nf4" else in_f
    rows = max(1, CHUNK_ELEMENTS // width)
    for o0 in range(0, out_f, rows):
        o1 = min(out_f, o0 + rows)
        if qw.kind == "nf4":
            w = nf4_dequantize(qw.data, qw.scales, _pairs(dtype), o0, o1, qw.block_size)[:, :in_f]
        else:
            w = int8_dequantize(qw.data, qw.scales, o0, np.empty((o1 - o0, in_f), dtype))
        yield o0, w


def quant_linear_forward(x, qw, b):
    """x (..., in) @ W.T + b -> (..., out): fused for few rows, dequantize + BLAS for many."""
    x2 = _rows(x)                                                             # (N, in)
    if x2.shape[0] <= FUSED_MAX_ROWS:
        if qw.kind == "nf4":
            y = nf4_matmul_t(qw.data, qw.scales, _pairs(x.dtype), x2, qw.block_size)
        else:
            y = int8_matmul_t(qw.data, qw.scales, x2)
    else:
        y = np.empty((x2.shape[0], qw.shape[0]), x.dtype)                     # (N, out)
        for o0, w in dequantized_chunks(qw, x.dtype):
            y[:, o0:o0 + w.shape[0]] = x2 @ w.T
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (qw.shape[0],))


def quant_linear_backward(g, qw):
    """gx = g (..., out) @ W -> (..., in): dequantize (in chunks of rows) + BLAS."""
    g2 = _rows(g)                                                             # (N, out)
    gx = None
    for o0, w in dequantized_chunks(qw, g.dtype):
        part = g2[:, o0:o0 + w.shape[0]] @ w                                  # (N, in)
        if gx is None:
            gx = part
        else:
            gx += part
    return gx.reshape(g.shape[:-1] + (qw.shape[1],))
