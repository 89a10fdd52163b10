"""Every CUDA kernel compiles to PTX for sm_80 (A100) and sm_90 (H100), without a GPU.

The CUDA simulator runs kernels as Python, so it never type-checks them: a kernel can pass
every simulator test and still fail to compile for a GPU (an unsupported function, a type
that does not unify, a float64 that sneaks into float32 code). numba.cuda.compile_ptx needs
no GPU and no driver, only NVRTC and NVVM (pip install 'tinygrad_lm[ptx]'); without them, or
with the simulator on, these tests skip.

Each kernel family is built for float32 and float64 with the GPU tile sizes, then every kernel
in kernels/cuda/_launch.KERNELS is compiled with the signature it was declared with. Float32
kernels must contain no float64 instruction (a Python float literal or an int division in a
kernel turns float32 arithmetic into float64, 2 to 64 times slower on GPUs)."""
import os
import re
import types

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0"):
    pytest.skip("compile_ptx is not available under the CUDA simulator", allow_module_level=True)
cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")

from tinygrad_lm.kernels.cuda import _launch, adamw, attention, cross_entropy, embedding, gelu, matmul, silu  # noqa: E402
from tinygrad_lm.kernels.cuda import norms, softmax  # noqa: E402

CCS = [(8, 0), (9, 0)]
FAMILIES = {"softmax": softmax, "cross_entropy": cross_entropy, "norms": norms, "gelu": gelu, "silu": silu, "adamw": adamw,
            "embedding": embedding, "attention": attention, "matmul": matmul}
HEAD_DIMS = [(64, 64), (128, 128), (48, 40)]  # GPT-2 small's 64, 128, and sizes that are not powers of 2
F64_INSTRUCTION = re.compile(r"\b[a-z]+(?:\.[a-z0-9]+)*\.f64\b")


def _build_all():
    """Build every kernel family with the GPU tiles (building compiles nothing)."""
    with _launch.use_tiles(_launch.GPU_TILES):
        t = _launch.tiles()
        for dt in (np.dtype(np.float32), np.dtype(np.float64)):
            softmax.build(dt, t.row_threads)
            cross_entropy.build(dt, t.row_threads)
            norms.build(dt, t.row_threads, t.param_cols, t.param_lanes)
            gelu.build(dt)
            silu.build(dt)
            adamw.build(dt)
            embedding.build(dt)
            matmul.build(dt, t.mm_bm, t.mm_bn, t.mm_bk, t.mm_tm, t.mm_tn)
            for D, Dv in HEAD_DIMS:
                attention.build(dt, D, Dv, *attention.attn_tiles(D, Dv, dt.itemsize))
    return list(_launch.KERNELS)


KERNELS = _build_all()


def _short(name):
    return name.rsplit(".", 1)[-1]


def _toolchain_missing() -> str | None:
    """Why compile_ptx cannot run here (no NVRTC / NVVM libraries), or None when it can."""
    def probe(x):
        x[0] = 1.0
    try:
        cuda.compile_ptx(probe, "void(float32[::1])", cc=CCS[0])
    except Exception as e:  # a missing library, not a kernel bug
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"{type(e).__name__}: {first}"
    return None


_missing = _toolchain_missing()
if _missing:
    pytest.skip(f"compile_ptx unavailable (pip install 'tinygrad_lm[ptx]' for NVRTC + NVVM): {_missing}",
                allow_module_level=True)


@pytest.fixture
def device_cc(monkeypatch):
    """Set the compute capability that device functions (block_sum, ...) are compiled for.

    numba-cuda compiles a kernel's calls to @cuda.jit(device=True) functions for "the current
    device", which needs a driver; compile_ptx alone does not. Stand in a device of the target
    capability for the duration of one test."""
    import numba.cuda.dispatcher as dispatcher

    def use(cc):
        monkeypatch.setattr(dispatcher, "get_current_device", lambda: types.SimpleNamespace(compute_capability=cc))
    return use


@pytest.mark.parametrize("cc", CCS, ids=lambda cc: f"sm_{cc[0]}{cc[1]}")
@pytest.mark.parametrize("name, dispatcher, signature", KERNELS,
                         ids=[f"{_short(n)}-{s.split('(')[1].split('[')[0]}-{i}" for i, (n, _, s) in
                              enumerate(KERNELS)])
def test_kernel_compiles_to_ptx(device_cc, cc, name, dispatcher, signature):
    device_cc(cc)
    ptx, _ = cuda.compile_ptx(dispatcher.py_func, signature, cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    if "float64" not in signature:
        f64 = sorted(set(F64_INSTRUCTION.findall(ptx)))
        assert not f64, f"{name} {signature}: float64 instructions in a float32 kernel: {f64}"


def test_every_kernel_family_is_built_here():
    """A new kernel module in kernels/cuda must be added to FAMILIES (and so compiled above)."""
    folder = os.path.dirname(softmax.__file__)
    modules = {f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_") and f != "ops.py"}
    assert modules == set(FAMILIES), f"kernel modules not compiled here: {sorted(modules - set(FAMILIES))}"
    built = {name.split(".")[3] for name, _, _ in KERNELS}
    assert built == set(FAMILIES)
