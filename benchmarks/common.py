"""Timing and reporting helpers shared by every benchmark in this folder.

How we time (the rules behind every number in RESULTS.md):

- Interleave the candidates: repeat r runs A, B, C, ... (reversed order on odd r), so a
  change in machine load hits every candidate alike. The machines have 2 cores and other
  processes may run next to us; interleaving plus medians keeps the comparison fair.
- Warm up first (imports, caches, JIT, allocator), then take many samples and report the
  median (and quartiles). One sample = ``number`` back-to-back calls, timed with
  ``time.perf_counter_ns`` and divided by ``number``; ``number`` is calibrated so a sample
  lasts at least ``min_sample_ns``.
- Compare candidates by the median of *paired* per-repeat differences and ratios (A's
  sample r against B's sample r, taken back to back), which cancels slow drift in load.

Everything a result needs to be reproduced goes in the JSON: the machine (:func:`machine_info`),
the command line and the settings.
"""
from __future__ import annotations

import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ---- timing -------------------------------------------------------------------------------

@dataclass
class Case:
    """One candidate: ``fn()`` is timed. With ``setup``, ``fn(setup())`` is timed one call per
    sample and ``setup()`` runs untimed before it (e.g. build a graph, then time backward)."""
    fn: Callable
    setup: Callable | None = None


@dataclass
class Stats:
    """Per-call times of one candidate, in nanoseconds."""
    samples: list[float]
    number: int  # calls per sample

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]

    def summary(self) -> dict:
        return {"median_ns": self.median, "p25_ns": self.quantile(0.25), "p75_ns": self.quantile(0.75),
                "min_ns": min(self.samples), "repeats": len(self.samples), "number": self.number}


def _as_case(c) -> Case:
    return c if isinstance(c, Case) else Case(c)


def _sample(case: Case, number: int) -> float:
    """Per-call ns of one sample."""
    if case.setup is not None:
        total = 0
        for _ in range(number):
            arg = case.setup()
            t0 = time.perf_counter_ns()
            case.fn(arg)
            total += time.perf_counter_ns() - t0
        return total / number
    fn = case.fn
    t0 = time.perf_counter_ns()
    for _ in range(number):
        fn()
    return (time.perf_counter_ns() - t0) / number


def calibrate(case, min_sample_ns: float = 2e6, max_number: int = 100_000) -> int:
    """Calls per sample so that one sample lasts at least ``min_sample_ns``."""
    case = _as_case(case)
    per_call = min(_sample(case, 1) for _ in range(3))
    number = 1
    while number * per_call < min_sample_ns and number < max_number:
        number *= 2
        per_call = _sample(case, number)
    return number


def interleaved(cases: dict, repeats: int = 31, warmup: int = 3, min_sample_ns: float = 2e6,
                number: int | None = None) -> dict[str, Stats]:
    """Time every case ``repeats`` times, interleaved (A B C, C B A, A B C, ...).

    ``cases``: name -> callable or :class:`Case`. Returns name -> :class:`Stats` (per-call ns).
    Every case gets its own ``number`` (calls per sample) unless one is given."""
    cases = {k: _as_case(v) for k, v in cases.items()}
    numbers = {k: number or calibrate(c, min_sample_ns) for k, c in cases.items()}
    names = list(cases)
    for _ in range(warmup):
        for k in names:
            _sample(cases[k], numbers[k])
    samples = {k: [] for k in names}
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            samples[k].append(_sample(cases[k], numbers[k]))
    return {k: Stats(samples[k], numbers[k]) for k in names}


def paired_diff(a: Stats, b: Stats) -> float:
    """Median of per-repeat differences a - b (ns): what a costs on top of b."""
    return statistics.median(x - y for x, y in zip(a.samples, b.samples))


def paired_ratio(a: Stats, b: Stats) -> float:
    """Median of per-repeat ratios a / b."""
    return statistics.median(x / y for x, y in zip(a.samples, b.samples))


# ---- machine and run information ------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


from tinygrad_lm.backend import _openblas_function, blas_threads, set_blas_threads  # noqa: E402,F401


def apply_blas_threads(ap, n: int) -> None:
    """Load tinygrad_lm's CPU kernels (loading may pin OpenBLAS to 1 thread, see backend), then set
    OpenBLAS to ``n`` threads as a benchmark's --blas-threads asks (0: leave it); ``ap.error`` if impossible."""
    from tinygrad_lm import backend
    backend.fast_table("cpu")
    if n and not set_blas_threads(n):
        ap.error("--blas-threads: could not find OpenBLAS's set_num_threads in this NumPy")


def _openblas_runtime() -> dict:
    """Threads and core type of the OpenBLAS that NumPy loaded (best effort, via ctypes)."""
    out = {}
    threads, corename = blas_threads(), _openblas_function("get_corename")
    if threads is not None:
        out["threads"] = threads
    if corename is not None:
        corename.restype = ctypes.c_char_p
        out["corename"] = corename().decode()
    return out


def _blas_info() -> dict:
    info = {}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info = {k: blas.get(k) for k in ("name", "version", "openblas configuration") if blas.get(k)}
    except Exception:  # older NumPy or an unusual build: the runtime probe below still helps
        pass
    info.update(_openblas_runtime())
    return info


def _git_revision() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": rev, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {}


def machine_info(env=None) -> dict:
    """What a reader needs to judge and reproduce a number: CPU, cores, load, versions, BLAS.

    ``env``: the environment to report (default this process's); a peer comparison passes the
    user's environment its worker processes got (benchmarks/peers.py), not this process's."""
    env = os.environ if env is None else env
    env_keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT",
                "NUMBA_NUM_THREADS", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    info = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": np.__version__,
        "blas": _blas_info(),
        "env": {k: env[k] for k in env_keys if k in env}
               | {k: v for k, v in env.items() if k.startswith("TINYGRAD_LM_")},
        "git": _git_revision(),
    }
    try:
        from tinygrad_lm import backend
        info["tinygrad_lm_allocator"] = getattr(backend, "ALLOCATOR_TUNING", None)
    except Exception:
        pass
    return info


# ---- output -----------------------------------------------------------------------------------

def write_json(path, payload: dict, machine: dict | None = None) -> Path:
    """Write ``payload`` plus the command line, time and machine info (``machine_info()`` unless
    given) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"command": " ".join([Path(sys.executable).name, "-m", _module_name()] + sys.argv[1:]),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "machine": machine_info() if machine is None else machine, **payload}
    tmp = path.with_name(path.name + ".tmp")  # write, then rename: never a half-written file
    tmp.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)
    return path


def _module_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else (sys.argv[0] if sys.argv else "?")


def _json_default(o):
    if isinstance(o, Stats):
        return o.summary()
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if hasattr(o, "__dataclass_fields__"):
        return asdict(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def format_table(headers: list[str], rows: list[list]) -> str:
    """A plain-text table (also valid Markdown), numbers right-aligned."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values):
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w)
                                 for v, w, num in zip(values, widths, numeric)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                         for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in cells])


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.1f}" if abs(v) < 10_000 else f"{v:.0f}"
    return str(v)


def us(ns: float) -> float:
    return ns / 1000.0
