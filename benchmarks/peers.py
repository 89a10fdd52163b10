"""Comparisons with a peer library that a skeptic would accept: each side in its own process, as its users run it.

Every benchmark that compares tinygrad_lm with another library (PyTorch today; tiktoken, HF
tokenizers, transformers later) times both sides through this module:

- **Own process, own defaults.** Each side runs in a fresh worker process per round, started
  with the environment the user started the benchmark with (``benchmarks.USER_ENV``), nothing
  added. tinygrad_lm's worker starts with ``import tinygrad_lm``, as the README tells users to,
  so tinygrad_lm makes its own settings (OpenBLAS's idle timeout, passive OpenMP waiting,
  allocator tuning) in its own process only. The peer's worker never imports tinygrad_lm and
  runs with the library's default threads. Why: one framework's settings slow the other (PyTorch's tiny
  GPT step took 34.5 ms with its defaults and 48 ms with OMP_WAIT_POLICY=passive, which we used
  to set), and two frameworks in one process take each other's cores.
- **Alternation.** Rounds go A B A B ..., so drifting machine load hits both sides alike.
- **Warm-up excluded.** Each worker runs warm-up calls first (imports, JIT compilation, thread
  pools, allocator), reports them apart, and times the calls after them.
- **Medians and spread.** A side's figure is the median of all its timed samples over all
  rounds; the spread is the range of its per-round medians (and the quartiles of the samples).
  The ratio is ours / peer of those medians, with the per-round ratios (round r against round r)
  beside it.
- **Diagnostic variants** (peer with 1 thread, passive waiting, our other thread settings)
  are Sides with ``diagnostic=True`` and an ``env`` on top of the user's environment; only a
  diagnostic Side may change the environment, and they are never the headline.

Worker protocol: a worker module calls :func:`worker_main` with its tasks; it is run as
``python -m MODULE TASK 'JSON ARGS'`` and prints the task's result dict as JSON on a line
starting with :data:`RESULT_MARK`. Standard library only: the PyTorch worker imports this.
"""
from __future__ import annotations

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import USER_ENV, USER_ENV_IS_CLEAN

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARK = "@@result "

# Set by tinygrad_lm for itself (tinygrad_lm/_threads.py, kernels/cpu/_jit.py) or by older
# benchmarks, and glibc's allocator tuning: none of it may reach a peer unless the user set it.
OUR_VARS = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT")
OUR_PREFIXES = ("MALLOC_",)
# Variables that change threads or memory behaviour: what each side's record shows.
RELEVANT_PREFIXES = ("OMP_", "OPENBLAS_", "GOTO_", "MKL_", "KMP_", "GOMP_", "NUMBA_", "MALLOC_",
                     "TORCH_", "TINYGRAD_LM_")
RELEVANT_VARS = ("LD_PRELOAD",)


class WorkerFailed(RuntimeError):
    pass


# ---- the environment each side gets ---------------------------------------------------------

def _set_by_us(name: str) -> bool:
    return name in OUR_VARS or name.startswith(OUR_PREFIXES)


def relevant_env(env) -> dict:
    """The thread- and memory-related variables of ``env`` (never the whole environment: it may hold secrets)."""
    return {k: env[k] for k in sorted(env) if k.startswith(RELEVANT_PREFIXES) or k in RELEVANT_VARS}


def user_env() -> tuple[dict, dict]:
    """(environment for a worker, variables left out of it). The environment is the one the user
    started the benchmark with; if tinygrad_lm was loaded before that copy was taken, every
    variable it might have set is left out, since the user's own can no longer be told apart."""
    env = dict(USER_ENV)
    dropped = {} if USER_ENV_IS_CLEAN else {k: env.pop(k) for k in list(env) if _set_by_us(k)}
    return env, dropped


# ---- the parent: run sides in alternation -----------------------------------------------------

@dataclass(frozen=True)
class Side:
    """One side of a comparison: ``python -m worker`` runs its tasks.

    ``args`` are task arguments for this side only; ``env`` is set on top of the user's
    environment and is allowed only on a diagnostic side (the headline runs with the defaults)."""
    label: str
    worker: str
    args: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    diagnostic: bool = False

    def __post_init__(self):
        if self.env and not self.diagnostic:
            raise ValueError(f"{self.label}: only a diagnostic side may change the environment")


def run_worker(side: Side, task: str, args: dict, timeout: float = 3600) -> dict:
    """Run one task of ``side`` in a fresh process; its result plus how the process was started."""
    env, dropped = user_env()
    env.update(side.env)
    cmd = [sys.executable, "-m", side.worker, task, json.dumps({**args, **side.args})]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        raise WorkerFailed(f"{side.label} ({side.worker} {task}) exited {proc.returncode}:\n"
                           f"{proc.stderr[-3000:] or proc.stdout[-3000:]}")
    result = json.loads(lines[-1][len(RESULT_MARK):])
    result["process"] = {"command": cmd[1:3] + [task], "wall_s": wall, "env_given": relevant_env(env),
                         "env_overrides": dict(side.env), "dropped_from_user_env": dropped,
                         "diagnostic": side.diagnostic}
    return result


def alternate(sides: list[Side], task: str, args: dict, rounds: int, log=print, timeout: float = 3600) -> dict:
    """Run ``task`` once per side per round, in a fresh process each, alternating A B A B ...

    Returns label -> list of per-round results. Logs each round's median sample as it comes."""
    out = {s.label: [] for s in sides}
    for r in range(rounds):
        for side in sides:
            res = run_worker(side, task, args, timeout)
            out[side.label].append(res)
            if log and res.get("samples"):
                log(f"  round {r + 1}/{rounds}  {side.label:34s} median {_ms(statistics.median(res['samples']))}"
                    f" of {len(res['samples'])} (warm-up {len(res.get('warmup', []))} excluded), "
                    f"process {res['process']['wall_s']:.1f} s", flush=True)
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms" if seconds < 10 else f"{seconds:,.2f} s"


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def summarise(rounds: list[dict]) -> dict:
    """Median of every timed sample (seconds) of every round, and the spread: per-round medians,
    their range relative to the median, quartiles and extremes of the samples."""
    pooled = [s for r in rounds for s in r["samples"]]
    per_round = [statistics.median(r["samples"]) for r in rounds]
    med = statistics.median(pooled)
    return {"median_s": med, "round_medians_s": per_round,
            "round_spread": (max(per_round) - min(per_round)) / med,
            "p25_s": _quantile(pooled, 0.25), "p75_s": _quantile(pooled, 0.75),
            "min_s": min(pooled), "max_s": max(pooled), "rounds": len(rounds),
            "timed_per_round": [len(r["samples"]) for r in rounds],
            "warmup_excluded_per_round": [len(r.get("warmup", [])) for r in rounds]}


def ratio(ours: dict, peer: dict) -> dict:
    """ours / peer of two :func:`summarise` results: of the medians, and round by round."""
    per_round = [a / b for a, b in zip(ours["round_medians_s"], peer["round_medians_s"])]
    return {"of_medians": ours["median_s"] / peer["median_s"], "per_round": per_round,
            "range": [min(per_round), max(per_round)]}


# ---- the worker: run one task and report -------------------------------------------------------

def worker_main(tasks: dict[str, Callable[[dict], dict]], runtime: Callable[[], dict] = dict) -> None:
    """Entry point of a worker module (``python -m MODULE TASK 'JSON ARGS'``): run the task and
    print its result, with the environment the process started with and the one after the
    library loaded (what the library set for itself), and ``runtime()`` (thread counts...)."""
    task, args = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    if task not in tasks:
        raise SystemExit(f"unknown task {task!r}; this worker has {', '.join(tasks)}")
    result = tasks[task](args)
    result.update(env_at_start=relevant_env(USER_ENV), env_after_imports=relevant_env(os.environ),
                  runtime=runtime(), pid=os.getpid())
    print(RESULT_MARK + json.dumps(result), flush=True)


def timed_calls(fn: Callable, warmup: int, n: int) -> dict:
    """``warmup`` untimed-for-the-result calls (their times are reported apart), then ``n`` timed ones.
    Returns seconds per call and what each call returned (e.g. losses)."""
    warm, samples, values = [], [], []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t0
        (warm if i < warmup else samples).append(dt)
        values.append(value)
    return {"warmup": warm, "samples": samples, "values": values}


# ---- peak memory of a worker -------------------------------------------------------------------

def _status_kib(field_name: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise KeyError(field_name)


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: echo 5 > clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory(warm_up: Callable[[], object], make_step: Callable[[], Callable], steps: int) -> dict:
    """Bytes a workload adds over a baseline taken after ``warm_up()`` (imports, JIT kernels and
    thread pools loaded by a small run), while ``make_step()`` builds it and ``steps`` calls run.

    - peak_rss: VmHWM (the peak resident set), reset to the current RSS at the baseline, minus it;
    - peak_ru_maxrss: getrusage's ru_maxrss difference. Linux carries ru_maxrss over from the
      parent across fork+exec, so it reads 0 when the parent was bigger (ru_maxrss_inherited);
    - rss_after: the resident set kept after the steps (allocators keep freed memory)."""
    warm_up()
    gc.collect()
    base_ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
    reset = _reset_peak()
    base_rss = _status_kib("VmRSS") * 1024
    step = make_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_rss": _status_kib("VmHWM") * 1024 - base_rss if reset else None,
            "peak_ru_maxrss": ru - base_ru, "ru_maxrss_inherited": base_ru > base_rss and ru == base_ru,
            "rss_after": _status_kib("VmRSS") * 1024 - base_rss, "baseline_rss": base_rss,
            "steps": steps, "seconds": secs}
