"""Benchmarks for tinygrad_lm (run as modules: ``python -m benchmarks.bench_engine``); see RESULTS.md.

Thread settings shared by every script, made here because this runs before any script imports
NumPy, Numba or torch (their thread pools read them once, at start-up); a user's own settings win:
- OMP_WAIT_POLICY=passive: idle OpenMP threads (Numba's team, torch's) sleep instead of spinning;
  with active waiting, on a loaded 2-core machine a tiny-config torch step went from ~0.1 s to ~2 s.
- OPENBLAS_THREAD_TIMEOUT (tinygrad_lm._threads): idle OpenBLAS threads sleep too."""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import tinygrad_lm._threads  # noqa: E402,F401  (before NumPy loads OpenBLAS)
