"""Data-parallel training on this machine: tokens/s with 1 and 2 MPI ranks, and the allreduce's cost.

    python -m benchmarks.bench_distributed --data PATH/tinyshakespeare.txt

Every candidate is a real `tinygrad-lm train` run (the one training loop) in fresh processes, the
same run each time: a preset's model and batch with gradient accumulation, so that 1 process and 2
ranks train on exactly the same batches per step (2 ranks: half the micro-batches each).

- "1 rank": `tinygrad-lm train ...` with one BLAS / Numba thread.
- "2 ranks": `mpiexec -n 2 tinygrad-lm train ...`, one BLAS / Numba thread per rank.
- "1 rank, 2 threads" (unless --no-threads): one process with 2 BLAS / Numba threads, the other way
  to use both cores.

Per run: the median ms per step from log.jsonl (steps after --skip, which compile kernels and warm
caches), tokens/s = tokens per step / that median, and for 2 ranks the median time per step in
World.allreduce_gradients (flatten, MPI Allreduce, copy back). Rounds interleave the candidates
(A B C, C B A, ...); the tables give the median over rounds, and the speed-up is the median of the
per-round ratios."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import USER_ENV
from .common import format_table, machine_info, write_json

# a preset plus the accumulation that splits over 2 ranks; "wide": more parameters per token, so
# the allreduce (proportional to parameters) weighs more against the compute (proportional to tokens)
CONFIGS = {
    "tiny": ["--preset", "tiny", "--gradient_accumulation_steps", "4"],
    "wide": ["--preset", "tiny", "--n_layer", "6", "--n_embd", "384", "--n_head", "6", "--batch_size", "8",
             "--gradient_accumulation_steps", "2"],
}
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"   # the mpich wheel's, matching mpi4py
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("bench_distributed: no mpiexec; pip install '.[mpi]'")
    return found


def run_once(config: str, ranks: int, threads: int, args, work: Path) -> dict:
    out = work / f"{config}-{ranks}x{threads}"
    # a fresh cache: the tokens and the compiled kernels are made once (the warm-up run), shared by every run
    env = {**USER_ENV, **{k: str(threads) for k in THREAD_VARS}, "TINYGRAD_LM_CACHE": str(work / "cache")}
    cmd = [sys.executable, "-m", "tinygrad_lm.cli", "train", "--data", args.data, *CONFIGS[config],
           "--max_iters", str(args.steps), "--eval_interval", str(args.steps), "--eval_iters", "1",
           "--log_interval", "1", "--sample_tokens", "0", "--quiet", "--overwrite", "--out", str(out)]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks)] + cmd
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        sys.exit(f"bench_distributed: {' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    steps = [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if not r.get("eval")]
    kept = [r for r in steps if r["iter"] > args.skip]
    ms = statistics.median(r["ms_per_iter"] for r in kept)
    tokens = steps[0]["tokens_per_s"] * steps[0]["ms_per_iter"] / 1e3   # tokens per step
    found = {"ms_per_step": ms, "tokens_per_s": tokens / ms * 1e3, "tokens_per_step": round(tokens),
             "steps_timed": len(kept)}
    if ranks > 1:
        found["allreduce_ms"] = statistics.median(r["allreduce_ms"] for r in kept)
    head = res.stdout.splitlines()[0]   # "data: ..., model: 0.80M parameters"
    found["model"] = head.split("model: ")[-1]
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="training text (e.g. tinyshakespeare.txt)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {', '.join(CONFIGS)}")
    ap.add_argument("--steps", type=int, default=25, help="optimizer steps per run")
    ap.add_argument("--skip", type=int, default=3, help="first steps not timed")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-threads", action="store_true", help="leave out '1 rank, 2 threads'")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny only, 8 steps, 1 round")
    ap.add_argument("--json", default="benchmarks/results/distributed.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.configs, args.steps, args.skip, args.rounds = "tiny", 8, 2, 1
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    candidates = [(1, 1), (2, 1)] + ([] if args.no_threads else [(1, 2)])
    name = {(1, 1): "1 rank", (2, 1): "2 ranks", (1, 2): "1 rank, 2 threads"}
    before = machine_info({**USER_ENV, **{k: "1" for k in THREAD_VARS}})
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for config in configs:
            run_once(config, 1, 1, argparse.Namespace(**{**vars(args), "steps": 2, "skip": 0}), work)  # compiles
            runs = {c: [] for c in candidates}
            for r in range(args.rounds):
                for c in (candidates if r % 2 == 0 else candidates[::-1]):
                    runs[c].append(run_once(config, *c, args, work))
                    got = runs[c][-1]
                    print(f"{config} {name[c]:18s} round {r + 1}: {got['ms_per_step']:8.1f} ms/step "
                          f"{got['tokens_per_s']:9,.0f} tok/s"
                          + (f", allreduce {got['allreduce_ms']:.2f} ms" if "allreduce_ms" in got else ""), flush=True)
            one = runs[(1, 1)]
            results[config] = {"args": CONFIGS[config], "model": one[0]["model"],
                               "tokens_per_step": one[0]["tokens_per_step"], "runs": {name[c]: runs[c] for c in runs}}
            for c, got in runs.items():
                speedup = statistics.median(a["ms_per_step"] / b["ms_per_step"] for a, b in zip(one, got))
                summary = {"ms_per_step": statistics.median(g["ms_per_step"] for g in got),
                           "tokens_per_s": statistics.median(g["tokens_per_s"] for g in got),
                           "speedup_vs_1_rank": speedup}
                if c[0] > 1:
                    summary["allreduce_ms"] = statistics.median(g["allreduce_ms"] for g in got)
                results[config][name[c]] = summary
                rows.append([config, one[0]["model"], name[c], round(summary["ms_per_step"], 1),
                             round(summary["tokens_per_s"]), round(speedup, 2),
                             round(summary["allreduce_ms"], 2) if "allreduce_ms" in summary else "-"])
    after = os.getloadavg()
    print()
    print(format_table(["config", "model", "candidate", "ms/step", "tokens/s", "vs 1 rank", "allreduce ms/step"],
                       rows))
    print(f"load average before {before['loadavg']}, after {list(after)}")
    path = write_json(args.json, {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                                  "results": results, "loadavg_after": list(after)}, machine=before)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
