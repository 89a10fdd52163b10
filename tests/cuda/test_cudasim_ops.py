"""The CUDA kernels equal their reference (forward, backward) pairs, under the CUDA simulator.

For every op in kernels/cuda/ops.FAST, the adapter (same signature as the reference, here fed
NumPy arrays, which the simulator takes) and backend.reference(op) get the same random inputs
in float32 and float64 and must agree to float rounding. The shapes are small (the simulator
runs every GPU thread as a Python thread) but with the simulator's small tiles (see
kernels/cuda/_launch.py) they still span several blocks, with sizes that are not multiples of
the block or tile size, threads striding over long rows, -inf entries, ignored targets, causal
masks with Tq == Tk, Tq < Tk (decode) and Tq > Tk (queries that see no key).

Tolerances: the kernels sum in the array's dtype in another order than NumPy (tree reductions,
online softmax), so float32 agrees to ~1e-6 relative, scaled by the size of the values.

Every module of tests/cuda runs in a process of its own (.ci/run does this):

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -p no:cacheprovider tests/cuda

Numba reads NUMBA_ENABLE_CUDASIM once, when it is first imported, and the main test run imports
it for the CPU kernels long before these files, so the simulator cannot be switched on there:
without the variable each module skips itself (a tests/cuda/conftest.py would do it too, but
a second module named "conftest" would shadow tests/conftest.py for `import conftest`). The
simulator checks indexing and results, not races or missing syncthreads: those are reviewed
by hand (the comment at each cuda.syncthreads() in kernels/cuda says why it is there)."""
import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() in ("", "0"):  # see the module docstring of test_cudasim_ops
    pytest.skip("CUDA-simulator tests run in their own process: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda",
                allow_module_level=True)

import inspect  # noqa: E402

import numpy as np  # noqa: E402

import tinygrad_lm.ops.nn  # noqa: E402,F401  (registers the reference pairs)
import tinygrad_lm.optim  # noqa: E402,F401  (registers the "adamw" reference)
from tinygrad_lm import backend  # noqa: E402
from tinygrad_lm.kernels.cuda import _launch  # noqa: E402
from tinygrad_lm.kernels.cuda import ops as cuda_ops  # noqa: E402
from test_kernels_cpu import amax  # noqa: E402,F401  (shared with the CPU kernel tests)
from test_kernels_cpu import close as _close  # noqa: E402

FAST = cuda_ops.FAST
DTYPES = [np.float32, np.float64]
RTOL = {np.float32: 2e-5, np.float64: 1e-11}
ATOL = {np.float32: 2e-6, np.float64: 1e-12}


def close(actual, expected, dtype, scale=1.0, what=""):
    """The CPU kernel tests' check, with this file's (looser, GPU-arithmetic) tolerances."""
    return _close(actual, expected, dtype, scale, what, rtol=RTOL, atol=ATOL)


def rand(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def test_simulator_tiles_are_small():
    """The shapes below were chosen for these tiles: several blocks, ragged edges."""
    t = _launch.tiles()
    assert _launch.SIMULATOR and t == _launch.SIMULATOR_TILES
    assert t.row_threads == 16 and t.attn_m == t.attn_n == 8 and t.param_rows == 6


# ---- softmax -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 37), (2, 16), (1, 1), (2, 100)])
def test_softmax_matches_reference(dtype, shape):
    rng = np.random.default_rng(0)
    x = rand(rng, shape, dtype, 3.0)
    if x.ndim == 3:
        x[0, 1, :] = -np.inf          # a whole row masked: zeros
        x[1, 2, ::3] = -np.inf        # some columns masked
    fast, ref = FAST["softmax"], backend.reference("softmax")
    y = fast.forward(x)
    close(y, ref.forward(x), dtype, what="softmax forward")
    g = rand(rng, shape, dtype)
    close(fast.backward(y, g), ref.backward(y, g), dtype, amax(g), what="softmax backward")


# ---- cross-entropy -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N, C, scale", [(9, 41, 3.0), (4, 7, 1.0), (3, 20, 1e4)])
def test_cross_entropy_matches_reference(dtype, N, C, scale):
    rng = np.random.default_rng(1)
    z = rand(rng, (N, C), dtype, scale)
    t = rng.integers(0, C, N)
    t[0], t[-1] = 0, C - 1                 # first and last column
    t[1] = -100                            # an ignored row
    fast, ref = FAST["cross_entropy"], backend.reference("cross_entropy")
    losses, lse = fast.forward(z, t, -100)
    ref_losses, ref_lse = ref.forward(z, t, -100)
    close(losses, ref_losses, dtype, amax(z), what="losses")
    close(lse, ref_lse, dtype, amax(z), what="lse")
    assert losses[1] == 0
    row_scale = rand(rng, N, dtype)
    close(fast.backward(z, lse, t, -100, row_scale), ref.backward(z, ref_lse, t, -100, row_scale), dtype,
          amax(row_scale), what="cross-entropy backward")


def test_cross_entropy_broadcast_row_scale_and_int32_targets():
    """CrossEntropy passes a broadcast (stride-0) row scale for mean/sum reductions."""
    rng = np.random.default_rng(2)
    z = rand(rng, (6, 19), np.float32)
    t = rng.integers(0, 19, 6).astype(np.int32)
    row_scale = np.broadcast_to(np.float32(1 / 6), (6,))
    fast, ref = FAST["cross_entropy"], backend.reference("cross_entropy")
    lse = fast.forward(z, t, -1)[1]
    close(fast.backward(z, lse, t, -1, row_scale), ref.backward(z, lse, t, -1, row_scale), np.float32)


def test_cross_entropy_out_of_range_target_is_nan_not_a_bad_read():
    z = np.zeros((2, 5), np.float32)
    losses, _ = FAST["cross_entropy"].forward(z, np.array([5, 2]), -100)
    assert np.isnan(losses[0]) and losses[1] == pytest.approx(np.log(5))


# ---- layer norm and RMS norm ---------------------------------------------------------------------

# (13, 40): rows stride over 40 columns with 16 threads; dw/db sums over 3 blocks of 6 rows
# (ragged) and 5 blocks of 8 columns. (3, 5, 19): batch dims, ragged columns. (1, 3): one row.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, affine", [((3, 5, 19), "weight+bias"), ((13, 40), "weight+bias"),
                                           ((13, 40), "weight"), ((1, 3), "none")])
def test_layer_norm_matches_reference(dtype, shape, affine):
    rng = np.random.default_rng(3)
    C = shape[-1]
    x = rand(rng, shape, dtype, 2.0) + dtype(0.5)
    w = rand(rng, C, dtype) if affine != "none" else None
    b = rand(rng, C, dtype) if affine == "weight+bias" else None
    fast, ref = FAST["layer_norm"], backend.reference("layer_norm")
    y, mean, rstd = fast.forward(x, w, b, 1e-5)
    ry, rmean, rrstd = ref.forward(x, w, b, 1e-5)
    for a, e, what in ((y, ry, "y"), (mean, rmean, "mean"), (rstd, rrstd, "rstd")):
        close(a, e, dtype, amax(e), what=what)
    g = rand(rng, shape, dtype)
    for a, e, what in zip(fast.backward(g, x, rmean, rrstd, w), ref.backward(g, x, rmean, rrstd, w),
                          ("dx", "dw", "db")):
        close(a, e, dtype, amax(e) * x.size / C, what=what)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, weight", [((3, 5, 19), True), ((13, 40), True), ((1, 3), False)])
def test_rms_norm_matches_reference(dtype, shape, weight):
    rng = np.random.default_rng(4)
    C = shape[-1]
    x = rand(rng, shape, dtype, 2.0)
    w = rand(rng, C, dtype) if weight else None
    fast, ref = FAST["rms_norm"], backend.reference("rms_norm")
    y, rstd = fast.forward(x, w, 1e-6)
    ry, rrstd = ref.forward(x, w, 1e-6)
    close(y, ry, dtype, amax(ry), what="y")
    close(rstd, rrstd, dtype, amax(rrstd), what="rstd")
    g = rand(rng, shape, dtype)
    for a, e, what in zip(fast.backward(g, x, rrstd, w), ref.backward(g, x, rrstd, w), ("dx", "dw")):
        close(a, e, dtype, amax(e) * x.size / C, what=what)


# ---- GELU ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_reference(dtype, approximate):
    rng = np.random.default_rng(5)
    x = rand(rng, (7, 11), dtype, 3.0)                  # 77 elements: 3 blocks of 32 threads
    x[0, :4] = [0.0, -30.0, 30.0, -1e-3]
    g = rand(rng, x.shape, dtype)
    fast, ref = FAST["gelu"], backend.reference("gelu")
    close(fast.forward(x, approximate), ref.forward(x, approximate), dtype, amax(x), what="gelu forward")
    close(fast.backward(x, g, approximate), ref.backward(x, g, approximate), dtype, amax(g), what="gelu backward")


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_matches_reference(dtype):
    rng = np.random.default_rng(7)
    x = rand(rng, (7, 11), dtype, 3.0)                  # 77 elements: 3 blocks of 32 threads
    x[0, :4] = [0.0, -100.0, 100.0, -1e-3]              # exp(100) overflows float32: the limit, not NaN
    g = rand(rng, x.shape, dtype)
    fast, ref = FAST["silu"], backend.reference("silu")
    close(fast.forward(x), ref.forward(x), dtype, amax(x), what="silu forward")
    close(fast.backward(x, g), ref.backward(x, g), dtype, amax(g), what="silu backward")


def test_gelu_grid_stride_covers_more_elements_than_threads(monkeypatch):
    """Capped at 2 blocks of 32 threads, each thread walks several elements."""
    monkeypatch.setattr(cuda_ops._gelu, "elementwise_grid", lambda n: (min(_launch.cdiv(n, 32), 2), 32))
    x = rand(np.random.default_rng(6), 150, np.float32)
    close(FAST["gelu"].forward(x, "tanh"), backend.reference("gelu").forward(x, "tanh"), np.float32)


# ---- attention -----------------------------------------------------------------------------------

# (batch dims, Tq, Tk, D, Dv, causal)
ATTENTION_CASES = [
    ((2,), 19, 19, 6, 6, True),       # 3 query tiles and 3 key tiles of 8, ragged
    ((1, 2), 13, 21, 4, 5, False),    # Tq != Tk, D != Dv, two batch dims
    ((2,), 1, 17, 6, 6, True),        # a decode step: one query sees every cached key
    ((1,), 12, 7, 3, 3, True),        # Tq > Tk: the first 5 queries see no key
    ((1,), 16, 16, 8, 8, True),       # exact multiples of the tiles
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: f"{c[1]}x{c[2]}-D{c[3]}-Dv{c[4]}-causal{c[5]}")
def test_attention_matches_reference(dtype, case):
    batch, Tq, Tk, D, Dv, causal = case
    rng = np.random.default_rng(7)
    q = rand(rng, batch + (Tq, D), dtype)
    k = rand(rng, batch + (Tk, D), dtype)
    v = rand(rng, batch + (Tk, Dv), dtype)
    scale = 1 / np.sqrt(D)
    fast, ref = FAST["attention"], backend.reference("attention")
    out, lse = fast.forward(q, k, v, scale, causal)
    with np.errstate(divide="ignore"):  # the reference logs 0 for queries that see no key
        rout, rlse = ref.forward(q, k, v, scale, causal)
    close(out, rout, dtype, what="out")
    close(lse, rlse, dtype, amax(rlse), what="lse")
    if Tq > Tk and causal:
        assert np.all(lse[..., : Tq - Tk] == -np.inf) and np.all(out[..., : Tq - Tk, :] == 0)
    dout = rand(rng, out.shape, dtype)
    grads = fast.backward(q, k, v, rout, rlse, dout, scale, causal)
    with np.errstate(invalid="ignore"):
        rgrads = ref.backward(q, k, v, rout, rlse, dout, scale, causal)
    for a, e, what in zip(grads, rgrads, ("dq", "dk", "dv")):
        close(a, e, dtype, amax(e) * 4, what=what)


def test_attention_non_contiguous_inputs():
    """The model passes q, k, v as transposed views (B, T, nh, hs) -> (B, nh, T, hs)."""
    rng = np.random.default_rng(8)
    qkv = rand(rng, (2, 11, 3, 2, 4), np.float32)                   # (B, T, 3, nh, hs)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, nh, T, hs), not contiguous
    fast, ref = FAST["attention"], backend.reference("attention")
    out, lse = fast.forward(q, k, v, 0.5, True)
    rout, rlse = ref.forward(q, k, v, 0.5, True)
    close(out, rout, np.float32)
    dout = np.ascontiguousarray(rand(rng, out.shape, np.float32).transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    for a, e in zip(fast.backward(q, k, v, rout, rlse, dout, 0.5, True),
                    ref.backward(q, k, v, rout, rlse, dout, 0.5, True)):
        close(a, e, np.float32, amax(e) * 4)


def test_attention_falls_back_to_the_reference_for_large_heads(monkeypatch):
    monkeypatch.setattr(cuda_ops, "MAX_HEAD_DIM", 4)
    launched = []
    monkeypatch.setattr(cuda_ops._attn, "forward", lambda *a: launched.append(a))
    rng = np.random.default_rng(9)
    q, k, v = (rand(rng, (1, 3, 5), np.float32) for _ in range(3))
    out, lse = FAST["attention"].forward(q, k, v, 0.5, False)
    rout, rlse = backend.reference("attention").forward(q, k, v, 0.5, False)
    assert not launched
    np.testing.assert_array_equal(out, rout)


# ---- embedding -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_matches_reference(dtype):
    rng = np.random.default_rng(10)
    ids = rng.integers(0, 6, (4, 5))
    ids[0, :3] = 2                                   # repeated ids add up (atomically)
    ids[ids == 4] = 5                                # an unused row stays zero
    g = rand(rng, (4, 5, 21), dtype)
    fast, ref = FAST["embedding"], backend.reference("embedding")
    dw = fast.backward(ids, g, 7)
    close(dw, ref.backward(ids, g, 7), dtype, amax(g) * 4)
    assert not dw[4].any() and not dw[6].any()


def test_embedding_skips_out_of_range_ids():
    g = np.ones((3, 2), np.float32)
    dw = FAST["embedding"].backward(np.array([0, 9, -1]), g, 2)
    np.testing.assert_array_equal(dw, [[1, 1], [0, 0]])


# ---- AdamW ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_reference(dtype, weight_decay):
    rng = np.random.default_rng(11)
    p = rand(rng, (5, 7), dtype)                      # 35 elements: 2 blocks of 32 threads
    state = {"fast": [p.copy(), np.zeros_like(p), np.zeros_like(p)],
             "ref": [p.copy(), np.zeros_like(p), np.zeros_like(p)]}
    for step in (1, 2, 3):
        g = rand(rng, p.shape, dtype)
        FAST["adamw"].forward(*state["fast"][:1], g, *state["fast"][1:], step, 1e-2, 0.9, 0.95, 1e-8, weight_decay)
        backend.reference("adamw").forward(*state["ref"][:1], g, *state["ref"][1:], step, 1e-2, 0.9, 0.95, 1e-8,
                                           weight_decay)
        for i, what in enumerate(("p", "m", "v")):
            close(state["fast"][i], state["ref"][i], dtype, amax(state["ref"][i]) * step,
                  what=f"adamw {what} after step {step}")


def test_fast_adamw_refuses_non_contiguous_arrays():
    p = np.zeros((3, 4), np.float32).T
    with pytest.raises(ValueError, match="contiguous"):
        FAST["adamw"].forward(p, p.copy(), p.copy(), p.copy(), 1, 1e-3, 0.9, 0.999, 1e-8, 0.0)


# ---- the tiled matmul (not in FAST: the model's matmuls stay on cuBLAS) ----------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("a_shape, b_shape", [((13, 9), (9, 11)), ((2, 3, 17, 5), (2, 3, 5, 8)),
                                              ((16, 8), (8, 16)), ((1, 1), (1, 3)), ((4, 0), (0, 3))])
def test_matmul_matches_numpy(dtype, a_shape, b_shape):
    rng = np.random.default_rng(12)
    a, b = rand(rng, a_shape, dtype), rand(rng, b_shape, dtype)
    close(cuda_ops.matmul(a, b), a @ b, dtype, amax(a) * amax(b) * max(1, a_shape[-1]))


def test_matmul_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="do not match"):
        cuda_ops.matmul(np.zeros((2, 3), np.float32), np.zeros((4, 2), np.float32))


# ---- the table -----------------------------------------------------------------------------------

def test_every_fast_op_is_tested_here():
    tested = {n[len("test_"):-len("_matches_reference")] for n in globals()
              if n.startswith("test_") and n.endswith("_matches_reference")}
    assert set(FAST) <= tested, f"fast CUDA ops without an equality test: {sorted(set(FAST) - tested)}"


# quant_linear's reference is already GPU code on CuPy arrays (elementwise dequantize, then cuBLAS);
# its CPU kernel exists to fuse the dequantization into the dot product for decoding.
CPU_ONLY = {"quant_linear"}


def test_the_cuda_table_covers_the_cpu_table():
    from tinygrad_lm.kernels.cpu import ops as cpu_ops
    assert set(FAST) == set(cpu_ops.FAST) - CPU_ONLY


@pytest.mark.parametrize("op", sorted(FAST))
def test_fast_signatures_match_the_reference(op):
    for fast_fn, ref_fn in zip(FAST[op], backend.reference(op)):
        assert (fast_fn is None) == (ref_fn is None)
        if fast_fn is not None:
            assert list(inspect.signature(fast_fn).parameters) == list(inspect.signature(ref_fn).parameters)


@pytest.mark.parametrize("op", ["softmax", "layer_norm", "attention"])
def test_empty_inputs(op):
    """Nothing to launch: shapes and dtypes still match the reference."""
    fast = FAST[op]
    if op == "softmax":
        x = np.zeros((0, 5), np.float32)
        assert fast.forward(x).shape == (0, 5)
    elif op == "layer_norm":
        x, g = np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32)
        _, mean, rstd = fast.forward(x, None, None, 1e-5)
        dx, dw, db = fast.backward(g, x, mean, rstd, None)
        assert dx.shape == (0, 5) and not dw.any() and dw.shape == db.shape == (5,)
    else:  # (the reference's max over zero keys raises here)
        q = np.zeros((2, 0, 4), np.float32)
        out, lse = fast.forward(q, q, q, 0.5, True)
        assert out.shape == (2, 0, 4) and lse.shape == (2, 0)
        assert all(d.shape == q.shape for d in fast.backward(q, q, q, out, lse, out, 0.5, True))


def test_mismatched_shapes_are_refused_before_launch():
    """A kernel trusts the sizes of its first array: on a GPU a mismatch would go out of bounds."""
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        FAST["softmax"].backward(x, x[:2])
    with pytest.raises(ValueError, match="do not fit"):
        FAST["cross_entropy"].forward(x, np.zeros(2, np.int64), -1)
    with pytest.raises(ValueError, match="does not fit"):
        FAST["layer_norm"].forward(x, np.ones(5, np.float32), None, 1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        FAST["embedding"].backward(np.zeros(2, np.int64), x, 3)
    q = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="do not fit"):
        FAST["attention"].backward(q, q, q, q, np.zeros((2, 3), np.float32), q[:, :2], 0.5, True)
