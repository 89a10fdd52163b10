"""The kernels with the tile sizes a real GPU uses (256-thread rows, 64x64 attention tiles,
16x16-thread matmul blocks), under the simulator, on the smallest shapes that still cover two
blocks or a strided loop. The other tests use the simulator's small tiles; these make sure the
GPU configuration (shared-array sizes, thread counts, the shared-memory fitting of attention
tiles) is exercised too."""
import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() in ("", "0"):  # see the module docstring of test_cudasim_ops
    pytest.skip("CUDA-simulator tests run in their own process: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda",
                allow_module_level=True)

import numpy as np  # noqa: E402

import tinygrad_lm.ops.nn  # noqa: E402,F401
import tinygrad_lm.optim  # noqa: E402,F401
from tinygrad_lm import backend  # noqa: E402
from tinygrad_lm.kernels.cuda import _launch  # noqa: E402
from tinygrad_lm.kernels.cuda import ops as cuda_ops  # noqa: E402
from tinygrad_lm.kernels.cuda.attention import attn_tiles  # noqa: E402

FAST = cuda_ops.FAST


@pytest.fixture(autouse=True)
def gpu_tiles():
    with _launch.use_tiles(_launch.GPU_TILES) as t:
        yield t


def close(a, e, rtol=2e-5, atol=1e-5):
    assert a.shape == e.shape and a.dtype == e.dtype
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


def test_gpu_tile_sizes():
    assert _launch.row_threads(300) == 256 and _launch.row_threads(5) == 32
    assert attn_tiles(64, 64, 4) == (64, 64)          # GPT-2 small heads: 32 KiB of tiles
    assert attn_tiles(64, 64, 8) == (32, 32)          # float64 halves them to fit
    assert attn_tiles(128, 128, 4) == (32, 32)
    assert attn_tiles(256, 256, 8) == (8, 8)


def test_rows_with_256_threads():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 300)).astype(np.float32)           # threads stride past 256
    w, b = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    sm, rsm = FAST["softmax"], backend.reference("softmax")
    y = sm.forward(x)
    close(y, rsm.forward(x))
    close(sm.backward(y, g), rsm.backward(y, g))
    ln, rln = FAST["layer_norm"], backend.reference("layer_norm")
    y, mean, rstd = ln.forward(x, w, b, 1e-5)
    for a, e in zip((y, mean, rstd), rln.forward(x, w, b, 1e-5)):
        close(a, e)
    for a, e in zip(ln.backward(g, x, mean, rstd, w), rln.backward(g, x, mean, rstd, w)):
        close(a, e)
    t = np.array([0, 299])
    ce, rce = FAST["cross_entropy"], backend.reference("cross_entropy")
    for a, e in zip(ce.forward(x, t, -1), rce.forward(x, t, -1)):
        close(a, e)


def test_elementwise_with_256_threads():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(300).astype(np.float32)                  # 2 blocks
    close(FAST["gelu"].forward(x, "none"), backend.reference("gelu").forward(x, "none"))
    p, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
    rp, rm, rv = x.copy(), np.zeros_like(x), np.zeros_like(x)
    FAST["adamw"].forward(p, -x, m, v, 1, 1e-2, 0.9, 0.95, 1e-8, 0.1)
    backend.reference("adamw").forward(rp, -x, rm, rv, 1, 1e-2, 0.9, 0.95, 1e-8, 0.1)
    close(p, rp)
    g = rng.standard_normal((3, 300)).astype(np.float32)
    ids = np.array([1, 0, 1])
    close(FAST["embedding"].backward(ids, g, 2), backend.reference("embedding").backward(ids, g, 2))


def test_flash_attention_with_64x64_tiles():
    rng = np.random.default_rng(2)
    T, D = 70, 4                                                     # 2 query tiles, 2 key tiles
    q, k, v = (rng.standard_normal((1, T, D)).astype(np.float32) for _ in range(3))
    fa, ref = FAST["attention"], backend.reference("attention")
    out, lse = fa.forward(q, k, v, 0.5, True)
    rout, rlse = ref.forward(q, k, v, 0.5, True)
    close(out, rout)
    close(lse, rlse)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    args = (q, k, v, rout, rlse, dout, 0.5, True)
    for a, e in zip(fa.backward(*args), ref.backward(*args)):
        close(a, e, atol=1e-4)


def test_matmul_with_16x16_thread_blocks():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((70, 20)).astype(np.float32)             # 2 x 2 blocks of 64 x 64, K < 2 * BK
    b = rng.standard_normal((20, 66)).astype(np.float32)
    close(cuda_ops.matmul(a, b), a @ b, atol=1e-4)
