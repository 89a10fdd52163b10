"""Training step: tinygrad_lm against PyTorch CPU eager, each in its own process as its users run it.

    python -m benchmarks.bench_train [--config tiny|small|both] [--diagnostics] [--no-torch]
                                     [--no-memory] [--no-peak] [--no-lockstep] [--json PATH]
                                     [--rounds N] [--steps N] [--warmup N]   (smoke runs only)

One step = forward + cross-entropy + backward + clip_grad_norm(1.0) + AdamW + zero_grad of the
GPT-2 architecture (learned positions, LayerNorm, exact GELU, tied weights), on the configs of
benchmarks/workload.py:

    tiny:  n_layer 4, n_head 4, n_embd 128, block 64,  batch 12
    small: n_layer 6, n_head 6, n_embd 384, block 256, batch 64

The method (benchmarks/peers.py, benchmarks/README.md): every round starts a fresh process per
side, alternating tinygrad_lm, torch, tinygrad_lm, torch, ... (tiny: 5 rounds of 3 warm-up + 20
timed steps; small: 2 rounds of 1 + 3). tinygrad_lm's process starts with ``import tinygrad_lm``
and the user's environment; torch's with ``import torch``, its default threads and the user's
environment, and never loads tinygrad_lm. Both start from the same weights (an .npz written here
from a seeded tinygrad_lm GPT) and step on the same batch; their first losses are compared.
Warm-up steps are excluded. Reported per side: the median step time over all timed steps of all
rounds, the spread (range of the per-round medians), tokens/s, model FLOPs utilisation, and the
ratio tinygrad_lm / torch (< 1: tinygrad_lm faster).

MFU = ``flops_per_token * tokens / step time`` (nanoGPT/PaLM's estimate at full context) over the
float32 matmul peak measured in this run: 2048^3 np.matmul in tinygrad_lm's process and
torch.matmul in torch's, each side's own environment, alternated like the steps. Shown against
the side's own library's peak and against NumPy's.

--diagnostics adds variants, labelled diagnostic and never the headline: torch with
OMP_NUM_THREADS=1 and with OMP_WAIT_POLICY=passive, tinygrad_lm with OPENBLAS_NUM_THREADS=1 and
with its reference kernels.

Memory (--no-memory skips it): small-config steps (2), each framework in its own process with
its own defaults, in bytes over a baseline taken after one tiny step (benchmarks.peers.peak_memory).

Lockstep correctness (--no-lockstep skips it; not a timing, so both run in this process): the
same weights, then 20 steps on the same sequence of batches; the losses must agree to 1e-5.

--rounds/--steps/--warmup below the method's numbers make a smoke run: the output and the JSON
say so, and its numbers are not results.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np

from . import peers
from .common import format_table, machine_info, write_json
from .peers import Side
from .workload import CLIP, CONFIGS, OPT, OURS, TORCH, batch, model_fields
DIAGNOSTICS = [
    Side("tinygrad_lm OPENBLAS_NUM_THREADS=1", OURS.worker, env={"OPENBLAS_NUM_THREADS": "1"}, diagnostic=True),
    Side("tinygrad_lm reference kernels", OURS.worker, env={"TINYGRAD_LM_KERNELS": "reference"}, diagnostic=True),
    Side("torch OMP_NUM_THREADS=1", TORCH.worker, env={"OMP_NUM_THREADS": "1"}, diagnostic=True),
    Side("torch OMP_WAIT_POLICY=passive", TORCH.worker, env={"OMP_WAIT_POLICY": "passive"}, diagnostic=True),
]
# The method's numbers: a small step takes seconds (PyTorch ~7-9 s on these machines), so fewer there.
ROUNDS = {"tiny": 5, "small": 2}
MIN_ROUNDS = {"tiny": 3, "small": 2}
STEPS = {"tiny": 20, "small": 3}
WARMUP = {"tiny": 3, "small": 1}
PEAK = dict(n=2048, warmup=3, repeats=20)  # 20 x ~90 ms a round: 5 calls made the peak vary 188-221 GFLOP/s
PEAK_ROUNDS = 3
MEMORY_STEPS = 2        # the second step has the AdamW moments allocated (the steady state)
LOCKSTEP_STEPS = 20
LOCKSTEP_TOL = 1e-5


def close(a: float, b: float, tol: float = LOCKSTEP_TOL) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# ---- shared initial weights ---------------------------------------------------------------------

def write_weights(folder: Path, name: str) -> tuple[str, dict]:
    """(path of an .npz of a seeded tinygrad_lm GPT's state_dict, model facts) for config ``name``."""
    from .side_tinygrad import build
    model = build(model_fields(CONFIGS[name]))
    path = folder / f"{name}.npz"
    np.savez(path, **model.state_dict())
    tokens = CONFIGS[name]["batch"] * CONFIGS[name]["block_size"]
    facts = {"num_params": model.num_params(), "flops_per_token": model.flops_per_token(),
             "tokens_per_step": tokens, "flops_per_step": model.flops_per_token() * tokens}
    return str(path), facts


# ---- the measurements ---------------------------------------------------------------------------

def matmul_peaks(sides: list[Side], rounds: int) -> dict:
    """label -> GFLOP/s of a float32 2048^3 matmul in that side's own process, alternated."""
    print(f"\nfloat32 matmul peak ({PEAK['n']}^3), each library in its own process, {rounds} round(s) of "
          f"{PEAK['warmup']} warm-up + {PEAK['repeats']} timed:", flush=True)
    runs = peers.alternate(sides, "matmul_peak", PEAK, rounds)
    flops = 2 * PEAK["n"] ** 3
    out = {}
    for label, rs in runs.items():
        s = peers.summarise(rs)
        out[label] = {"gflops": flops / s["median_s"] / 1e9, "summary": s, "runs": rs}
        print(f"  {label}: {out[label]['gflops']:.0f} GFLOP/s (round medians "
              f"{', '.join(f'{flops / m / 1e9:.0f}' for m in s['round_medians_s'])})")
    return out


def time_config(name: str, sides: list[Side], weights: str, facts: dict, plan: dict, peaks: dict) -> dict:
    """Alternated rounds of training steps for one config; per-side summaries, ratios and MFU."""
    args = {"config": name, "fields": model_fields(CONFIGS[name]), "weights": weights,
            "warmup": plan["warmup"], "steps": plan["steps"]}
    print(f"\n{name}: {plan['rounds']} round(s), each side in a fresh process: {plan['warmup']} warm-up "
          f"step(s) (excluded), then {plan['steps']} timed", flush=True)
    runs = peers.alternate(sides, "train", args, plan["rounds"])
    first = {label: [r["losses"][0] for r in rs] for label, rs in runs.items()}
    ref = first[OURS.label][0]
    for label, losses in first.items():
        ok = all(close(x, ref) for x in losses)
        print(f"  first loss (same weights, same batch) {label:34s} {losses[0]:.6f} [{'ok' if ok else 'MISMATCH'}]")
    summaries = {label: peers.summarise(rs) for label, rs in runs.items()}
    numpy_peak = peaks.get(OURS.label, {}).get("gflops")
    rows = {}
    for side in sides:
        s = summaries[side.label]
        own_peak = peaks.get(OURS.label if side.worker == OURS.worker else TORCH.label, {}).get("gflops")
        gflops = facts["flops_per_step"] / s["median_s"] / 1e9
        rows[side.label] = {
            "diagnostic": side.diagnostic, "summary": s, "ms_per_step": s["median_s"] * 1e3,
            "tokens_per_s": facts["tokens_per_step"] / s["median_s"], "achieved_gflops": gflops,
            "mfu_own_peak": gflops / own_peak if own_peak else None,
            "mfu_numpy_peak": gflops / numpy_peak if numpy_peak else None,
            "vs_torch": peers.ratio(s, summaries[TORCH.label]) if TORCH.label in summaries else None,
            "first_losses": first[side.label], "runs": runs[side.label]}
    return rows


def measure_memory(sides: list[Side], config: str, steps: int) -> dict:
    print(f"\nMemory of {steps} {config}-config training step(s), each framework in its own process with its "
          f"defaults, over the baseline after one tiny step:", flush=True)
    runs = peers.alternate(sides, "memory", {"config": config, "steps": steps}, rounds=1, log=None)
    out = {}
    for label, (r,) in runs.items():
        out[label] = r
        ru = "n/a (carried over from the parent)" if r["ru_maxrss_inherited"] else "+" + _mib(r["peak_ru_maxrss"])
        print(f"  {label:12s} peak RSS +{_mib(r['peak_rss'])} (VmHWM), ru_maxrss {ru}, "
              f"RSS kept after the steps +{_mib(r['rss_after'])} ({r['seconds']:.1f} s)")
    return out


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:.0f} MiB"


def lockstep(name: str, weights: str, steps: int) -> dict:
    """Both frameworks from the same weights through the same batches, in this process (not a
    timing): the largest loss difference over ``steps`` steps."""
    from . import side_tinygrad, side_torch
    fields = model_fields(CONFIGS[name])
    ours = side_tinygrad.make_train_step(side_tinygrad.build(fields, weights))
    theirs = side_torch.make_train_step(side_torch.build(fields, weights))
    pairs = [(ours(*b), theirs(*b)) for b in (batch(CONFIGS[name], seed=i) for i in range(steps))]
    worst = max(abs(a - b) for a, b in pairs)
    ok = all(close(a, b) for a, b in pairs)
    print(f"\nlockstep {name} (same weights, same {steps} batches, one process, not timed): losses "
          f"{pairs[0][0]:.6f} -> {pairs[-1][0]:.6f}, largest |tinygrad_lm - torch| {worst:.1e} "
          f"[{'ok' if ok else 'MISMATCH'}: tolerance {LOCKSTEP_TOL:g}]")
    return {"config": name, "steps": steps, "losses": pairs, "max_abs_diff": worst, "ok": ok, "tolerance": LOCKSTEP_TOL}


# ---- report -------------------------------------------------------------------------------------

def print_table(results: dict, has_torch: bool) -> None:
    headers = ["config", "side", "ms/step", "round medians", "tokens/s", "GFLOP/s", "MFU own peak", "MFU NumPy peak"]
    if has_torch:
        headers.append("time / torch (per round)")
    table = []
    for name, rows in results.items():
        for label, r in sorted(rows.items(), key=lambda kv: kv[1]["diagnostic"]):   # headline first
            s = r["summary"]
            row = [name, label + (" (diagnostic)" if r["diagnostic"] else ""), r["ms_per_step"],
                   " / ".join(f"{m * 1e3:.1f}" for m in s["round_medians_s"]), r["tokens_per_s"], r["achieved_gflops"],
                   _pct(r["mfu_own_peak"]), _pct(r["mfu_numpy_peak"])]
            if has_torch:
                v = r["vs_torch"]
                row.append(f"{v['of_medians']:.2f} ({', '.join(f'{x:.2f}' for x in v['per_round'])})")
            table.append(row)
    print("\nTraining step, median over every timed step of every round (warm-up excluded); "
          "time / torch < 1: tinygrad_lm faster")
    print(format_table(headers, table))


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def plans(args, configs) -> dict:
    """Rounds, steps and warm-up per config; smoke = fewer than the method asks for."""
    out = {}
    for name in configs:
        p = {"rounds": args.rounds or ROUNDS[name], "steps": args.steps or STEPS[name],
             "warmup": WARMUP[name] if args.warmup is None else args.warmup}
        p["smoke"] = p["rounds"] < MIN_ROUNDS[name] or p["steps"] < STEPS[name] or p["warmup"] < 1
        out[name] = p
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=["tiny", "small", "both"], default="both")
    ap.add_argument("--diagnostics", action="store_true", help="also time the diagnostic variants (never the headline)")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch side")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--memory-steps", type=int, default=MEMORY_STEPS, help=argparse.SUPPRESS)
    ap.add_argument("--no-peak", action="store_true", help="skip the matmul peak (no MFU)")
    ap.add_argument("--no-lockstep", action="store_true", help="skip the lockstep correctness check")
    ap.add_argument("--rounds", type=int, help=f"rounds per config (default {ROUNDS}; fewer than {MIN_ROUNDS}: smoke run)")
    ap.add_argument("--steps", type=int, help=f"timed steps per round (default {STEPS})")
    ap.add_argument("--warmup", type=int, help=f"warm-up steps per round (default {WARMUP})")
    ap.add_argument("--json", default="benchmarks/results/train.json")
    args = ap.parse_args(argv)

    has_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not has_torch:
        print("note: " + ("PyTorch side left out (--no-torch)" if args.no_torch else
                          "PyTorch is not installed (pip install -e '.[bench]'): tinygrad_lm only"))
    sides = [OURS] + ([TORCH] if has_torch else [])
    if args.diagnostics:
        sides += [d for d in DIAGNOSTICS if has_torch or d.worker == OURS.worker]
    configs = list(CONFIGS) if args.config == "both" else [args.config]
    plan = plans(args, configs)
    if any(p["smoke"] for p in plan.values()):
        print("SMOKE RUN: fewer rounds/steps than the method asks for; the numbers are not results")
    env, dropped = peers.user_env()
    print(f"environment given to every side (thread/memory variables): {peers.relevant_env(env) or 'none set'}"
          + (f"; left out (set before the benchmark started, may be tinygrad_lm's): {dropped}" if dropped else ""))
    load_before = os.getloadavg()
    payload = {"benchmark": "train", "method": "benchmarks/peers.py: own process per side per round, alternated, "
               "user's environment, warm-up excluded, medians", "plan": plan, "configs": {c: CONFIGS[c] for c in configs},
               "optimizer": OPT, "clip": CLIP, "sides": [dataclasses.asdict(s) for s in sides],
               "user_env": peers.relevant_env(env), "dropped_from_user_env": dropped, "load_before": list(load_before)}

    peaks = {} if args.no_peak else matmul_peaks([OURS] + ([TORCH] if has_torch else []),
                                                 1 if plan[configs[0]]["smoke"] else PEAK_ROUNDS)
    payload["matmul_peaks"] = peaks
    results, facts = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        weights = {}
        for name in configs:
            weights[name], facts[name] = write_weights(Path(tmp), name)
            results[name] = time_config(name, sides, weights[name], facts[name], plan[name], peaks)
        payload["timing"], payload["config_facts"] = results, facts
        print_table(results, has_torch)
        if not args.no_memory:
            payload["memory_small"] = measure_memory(sides[:2], "small", args.memory_steps)
        if has_torch and not args.no_lockstep:
            payload["lockstep"] = lockstep("tiny", weights.get("tiny") or write_weights(Path(tmp), "tiny")[0],
                                           LOCKSTEP_STEPS)
    load_after = os.getloadavg()
    payload["load_after"] = list(load_after)
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores")
    print(f"wrote {write_json(args.json, payload, machine=machine_info(env=env))}")


if __name__ == "__main__":
    main()
