"""Vectorizable exp, tanh and normal CDF for the CPU kernels.

Why: the llvmlite that pip installs has no vector math library (SVML), so ``math.exp`` or
``math.erf`` inside a Numba loop is a scalar libm call per element and the loop cannot be
vectorized: GELU's erf ran at ~20 ns per element, ten times slower than NumPy's SIMD exp.
The float32 versions here are plain float32 arithmetic (a polynomial, a floor and an exponent
built from bits), which LLVM vectorizes (AVX-512: 16 lanes per instruction).

Accuracy (tests/test_kernels_cpu.py checks it against float64 NumPy): float32 ``exp`` is within
1 ulp over its whole range (subnormal results and overflow to inf included), ``tanh`` within a
few ulp; ``normal_cdf`` (computed in float64: in float32 its error reached 1.7e-6 at x = -5)
within 2e-7 relative everywhere, also in the far negative tail where ``0.5 * (1 + erf(x))`` has
no correct digit left. float64 inputs take ``math.exp``/``math.tanh``/``math.erf`` unchanged: float64 is the
gradcheck dtype, where results must match the reference exactly.

Kernels that call these need ``error_model="numpy"`` (the `_jit` default): Python's error
model puts a ZeroDivisionError branch on every division, which stops vectorization.

Numba caches a kernel by its own file's timestamp, not by the files it calls: after editing
this file, delete ``kernels/cpu/__pycache__`` (fresh installs are unaffected)."""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

_f32 = np.float32
_INV_SQRT2 = 0.7071067811865476
_JIT = dict(inline="always", fastmath={"contract"}, error_model="numpy")
_OVERLOAD = dict(inline="always", jit_options=dict(fastmath={"contract"}, error_model="numpy"))
# No conditional expressions (a if c else b) in these bodies: inlined into a kernel's loop they
# made Numba warn (NumbaIRAssumptionWarning); blends and NaN-propagating min/max instead.
_LOG2E = _f32(1.4426950408889634)
# ln 2 split in two (Cody and Waite): k * _LN2_HI is exact for |k| < 2^15, so x - k ln 2 keeps
# the bits that a single float32 ln 2 would lose.
_LN2_HI, _LN2_LO = _f32(0.693359375), _f32(-2.12194440e-4)
_EXP_TAYLOR = tuple(_f32(1 / math.factorial(i)) for i in range(8))
# erfc(z) ~ t exp(-z^2 + q(t)), t = 1 / (1 + z / 2): Chebyshev fit from Numerical Recipes (2nd ed.,
# section 6.2), relative error < 1.2e-7 for every z >= 0.
_ERFC_Q = tuple(float(c) for c in (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                                    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277))


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float whose IEEE-754 bit pattern is the integer `bits`, of the same width (int32 ->
    float32, int64 -> float64): a register move."""
    out, ir_type = {32: (types.float32, ir.FloatType()), 64: (types.float64, ir.DoubleType())}[bits.bitwidth]

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir_type)
    return out(bits), codegen


@njit(**_JIT)
def exp32(x):
    """exp of a float32: x = k ln 2 + r with |r| <= ln(2)/2, exp(r) by a degree-7 Taylor
    polynomial (error < 3e-8), times 2^k built from exponent bits (in two factors, so that
    results down to the smallest subnormal come out right)."""
    xc = np.minimum(np.maximum(x, _f32(-104.0)), _f32(89.0))   # exp(-104) rounds to 0, exp(89) to inf; NaN stays
    kf = math.floor(xc * _LOG2E + _f32(0.5))
    k32 = _f32(kf)
    r = (xc - k32 * _LN2_HI) - k32 * _LN2_LO
    c = _EXP_TAYLOR
    p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * (c[6] + r * c[7]))))))
    k = np.int32(kf)
    h = k >> 1                           # (NaN in: p is NaN, so is the result)
    return p * _float_from_bits(np.int32((h + 127) << 23)) * _float_from_bits(np.int32((k - h + 127) << 23))


@njit(**_JIT)
def _exp64(x):
    """exp of a float64 to ~1e-11 relative for -700 < x < 700 (enough below float32 rounding):
    degree-9 Taylor polynomial of 2^r, |r| <= 1/2, times 2^k from exponent bits."""
    t = min(max(x * 1.4426950408889634, -1000.0), 1000.0)
    kf = math.floor(t + 0.5)
    r = (t - kf) * 0.6931471805599453
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (
        1 / 720 + r * (1 / 5040 + r * (1 / 40320 + r * (1 / 362880)))))))))
    return p * _float_from_bits(np.int64((np.int64(kf) + 1023) << 52))


@njit(**_JIT)
def _erfc_nonneg(z):
    """erfc(z) for float64 z >= 0 (see _ERFC_Q), in float64: the exponent -z^2 + q reaches -85 in
    float32's range, and rounding it to float32 would cost up to 3e-6 of relative accuracy."""
    t = 1.0 / (1.0 + 0.5 * z)
    c = _ERFC_Q
    q = c[0] + t * (c[1] + t * (c[2] + t * (c[3] + t * (c[4] + t * (c[5] + t * (c[6] + t * (
        c[7] + t * (c[8] + t * c[9]))))))))
    return t * _exp64(q - z * z)


def fexp(x):
    """exp(x) (Python fallback; kernels get the overload below)."""
    return math.exp(x)


def ftanh(x):
    """tanh(x) (Python fallback; kernels get the overload below)."""
    return math.tanh(x)


def normal_cdf(x):
    """P(N(0, 1) <= x) (Python fallback; kernels get the overload below)."""
    return 0.5 * (1.0 + math.erf(x * _INV_SQRT2))


@overload(fexp, **_OVERLOAD)
def _fexp(x):
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: math.exp(x)


@overload(ftanh, **_OVERLOAD)
def _ftanh(x):
    if x == types.float32:
        def f32(x):
            # tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|) <= 1 (no overflow); below 1/8, where
            # 1 - e cancels, the odd Taylor series to x^7 (next term < 2e-9 relative)
            a = abs(x)
            e = exp32(_f32(-2.0) * a)
            big = (_f32(1.0) - e) / (_f32(1.0) + e)
            s = np.minimum(a, _f32(0.125))
            s2 = s * s
            small = s * (_f32(1.0) + s2 * (_f32(-1 / 3) + s2 * (_f32(2 / 15) + s2 * _f32(-17 / 315))))
            w = _f32(a < _f32(0.125))
            return math.copysign(w * small + (_f32(1.0) - w) * big, x)
        return f32
    return lambda x: math.tanh(x)


@overload(normal_cdf, **_OVERLOAD)
def _normal_cdf(x):
    if x == types.float32:
        def f32(x):
            v = np.float64(x)
            tail = 0.5 * _erfc_nonneg(abs(v) * _INV_SQRT2)                # P(N > |x|)
            return _f32(tail + np.float64(v >= 0) * (1.0 - 2.0 * tail))     # 1 - tail for x >= 0
        return f32
    return lambda x: 0.5 * (1.0 + math.erf(x * _INV_SQRT2))


def like(x, c):
    """The constant c in the dtype of array (or scalar) x (Python fallback).

    Kernels use it for literals: a Python float literal is float64 and makes every product
    with it float64, which halves the SIMD width and changes float32 rounding."""
    return np.asarray(c, dtype=getattr(x, "dtype", type(x)))[()]


@overload(like, **_OVERLOAD)
def _like(x, c):
    dtype = x.dtype if isinstance(x, types.Array) else x
    return lambda x, c: dtype(c)
