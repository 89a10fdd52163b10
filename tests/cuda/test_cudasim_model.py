"""A whole tiny GPT on the CUDA kernels (under the simulator): same loss, gradients, AdamW steps
and KV-cache decode logits as with the reference ops.

The simulator takes NumPy arrays, so the CUDA FAST table stands in for the CPU one: every hot op
of the model (attention, norms, GELU, cross-entropy, embedding, AdamW) then runs through the
CUDA adapters, with the shapes and layouts the model really passes (transposed head views,
broadcast loss scales, decode steps with Tq = 1)."""
import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() in ("", "0"):  # see the module docstring of test_cudasim_ops
    pytest.skip("CUDA-simulator tests run in their own process: NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda",
                allow_module_level=True)

import numpy as np  # noqa: E402

import tinygrad_lm as tg  # noqa: E402
from test_kernels_cpu import GPT_VARIANTS, batch, counted_table, run_model, tiny_gpt  # noqa: E402  (the CPU kernels' model test)
from tinygrad_lm import backend  # noqa: E402
from tinygrad_lm.kernels.cuda import ops as cuda_ops  # noqa: E402


@pytest.fixture
def cuda_kernels_on_numpy(monkeypatch):
    """Route fast-mode NumPy arrays to the CUDA kernels; -> the set of ops that ran."""
    table, used = counted_table(cuda_ops.FAST)
    monkeypatch.setitem(backend._fast_tables, "cpu", table)
    return used


@pytest.mark.parametrize("variant", ["learned", "rmsnorm"])
def test_tiny_gpt_same_loss_and_gradients_on_cuda_kernels(variant, cuda_kernels_on_numpy):
    idx, targets = batch()
    with tg.use_kernels("reference"):
        ref = run_model(tiny_gpt(**GPT_VARIANTS[variant]), idx, targets)
    assert not cuda_kernels_on_numpy
    with tg.use_kernels("fast"):
        fast = run_model(tiny_gpt(**GPT_VARIANTS[variant]), idx, targets, step_grads=ref[1])
    norm = "rms_norm" if variant == "rmsnorm" else "layer_norm"
    assert {"attention", "cross_entropy", "embedding", "adamw", "gelu", norm} <= cuda_kernels_on_numpy

    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast[0], ref[0], **tol, err_msg="loss")
    for name in ref[1]:
        np.testing.assert_allclose(fast[1][name], ref[1][name], **tol, err_msg=f"grad of {name}")
        assert fast[1][name].dtype == np.float32
        np.testing.assert_allclose(fast[2][name], ref[2][name], **tol, err_msg=f"{name} after 2 AdamW steps")
    np.testing.assert_allclose(fast[3], ref[3], **tol, err_msg="KV-cache decode logits")
