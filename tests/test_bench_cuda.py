"""benchmarks/bench_cuda.py without a GPU: it says so and exits 1, and its plumbing (the op cases,
their argument tuples, the error and timing helpers) works when fed NumPy and the CPU kernels, so
the first run on a real GPU does not die on a typo."""
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `pytest` (not `python -m pytest`) does not put the repo root on the path
    sys.path.insert(0, ROOT)

from benchmarks import bench_cuda  # noqa: E402
from tinygrad_lm import backend, cuda_available  # noqa: E402
from tinygrad_lm.kernels.cpu import ops as cpu_ops  # noqa: E402

CPU_ONLY = {"quant_linear"}   # no CUDA kernel (yet): on a GPU the reference (CuPy dequantize + matmul) runs
TINY = dict(n_layer=1, n_head=2, n_embd=8, block_size=6, batch=2, vocab=5)


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU exit")
def test_exits_with_a_clear_message_without_a_gpu(capsys, tmp_path):
    assert bench_cuda.main(["--json", str(tmp_path / "out.json")]) == 1
    err = capsys.readouterr().err
    assert "bench_cuda: no GPU" in err and "CuPy" in err
    assert not (tmp_path / "out.json").exists()


def test_cases_run_through_the_reference_and_fast_pairs():
    cases = [c for c in bench_cuda.build_cases(np, TINY, vocab_big=7) if c.op != "matmul"]
    assert {c.op for c in cases} == set(cpu_ops.FAST) - CPU_ONLY
    rows = bench_cuda.check_kernels(cases, cpu_ops.FAST, np)   # the CPU kernels stand in for the CUDA ones
    assert rows and all(r["ok"] for r in rows), rows
    for case in cases:
        for kind in ("fwd", "bwd"):
            assert case.work[kind][0] >= 0 and case.work[kind][1] >= 0
        if case.fwd_args is not None:
            bench_cuda.run_fwd(backend.reference(case.op), case)()


def test_matmul_cases_and_timing_helper():
    (small, square) = [c for c in bench_cuda.build_cases(np, TINY) if c.op == "matmul"]
    a, b = small.fwd_args
    np.testing.assert_allclose(bench_cuda.run_fwd(None, small)(), a @ b)
    stats = bench_cuda.time_gpu({"matmul": bench_cuda.run_fwd(None, small)}, lambda: None, repeats=3, burst_ms=0.1)
    assert stats["matmul"].median > 0 and len(stats["matmul"].samples) == 3
