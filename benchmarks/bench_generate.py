"""Generation speed with the KV cache: tokens/s, and per-token time as the context grows.

    python -m benchmarks.bench_generate [--quick] [--blas-threads N] [--no-torch] [--json PATH]

For each model shape (random weights: speed does not depend on them) we decode from a
1-token prompt and time every step, repeated; the median time of each step shows whether
per-token cost stays flat as the context fills (it should with the cache, and grow without).
Then tokens/s over a long generation that runs past block_size (sliding-window re-prefills
included).

PyTorch peer (when installed; else a note and tinygrad_lm rows only), by the method of
benchmarks/peers.py: each side in its own process per round with its users' defaults (torch never
loads tinygrad_lm), rounds alternated (3; --quick: 1), one warm-up generation per mode excluded,
medians. The same model (weights saved to an .npz, loaded by state_dict name into
benchmarks/torch_gpt.py), greedy decoding from the same 1-token prompt:

    cached     KV cache, 4 x block_size new tokens (2 x with --quick): the window slides, so
               this includes tinygrad_lm's re-prefills, which the torch loop copies exactly
    recompute  no cache: every step re-runs the whole window, like nanoGPT's generate;
               block_size new tokens (the context fills once)

Both are single-sequence (batch 1), in torch.no_grad / tinygrad_lm.no_grad. The greedy tokens
of both frameworks are compared (same weights: they should match). tokens/s = new tokens /
median wall time; "tinygrad / torch" is the ratio of tokens/s (> 1: tinygrad_lm faster), of the
medians, with the per-round ratios beside it.

The per-position table runs in this process, tinygrad_lm only, with OpenBLAS at --blas-threads
(default 1: decode matmuls are tiny, and 2 threads on a busy 2-core machine stall).
"""
from __future__ import annotations

import tinygrad_lm as tg  # first, as users do: its thread settings precede NumPy

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from tinygrad_lm.models import GPT, GPTConfig

from . import peers
from .common import apply_blas_threads, blas_threads, format_table, machine_info, write_json
from .workload import CONFIGS, OURS, TORCH, model_fields

SHAPES = {name: model_fields(cfg) for name, cfg in CONFIGS.items()}   # the GPT-2 models of bench_train


def step_times(model: GPT, n: int, use_cache: bool, repeats: int) -> np.ndarray:
    """(repeats, n) seconds per decode step, from a 1-token prompt, greedy."""
    out = np.empty((repeats, n))
    for r in range(repeats):
        gen = model._decode(np.zeros((1, 1), np.int64), n, 0.0, None, None, 0, None, use_cache)
        t0 = time.perf_counter()
        for i, _ in enumerate(gen):
            t1 = time.perf_counter()
            out[r, i] = t1 - t0
            t0 = t1
    return out


def tokens_per_s(model: GPT, n: int, repeats: int, use_cache: bool = True) -> float:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(np.zeros((1, 1), np.int64), n, temperature=1.0, top_k=50, seed=0, use_cache=use_cache)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def peer_comparison(name, model, long_n, rounds, repeats) -> tuple[list, dict]:
    """Greedy tokens/s of tinygrad_lm and the PyTorch peer, cached and recomputing, each side in
    its own process with its users' defaults, alternated (benchmarks/peers.py); both load
    ``model``'s weights."""
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        weights = Path(tmp) / f"{name}.npz"
        np.savez(weights, **model.state_dict())
        return _peer_rounds(name, str(weights), long_n, rounds, repeats)


def _peer_rounds(name, weights, long_n, rounds, repeats) -> tuple[list, dict]:
    args = {"fields": SHAPES[name], "weights": weights, "cached_tokens": long_n, "warmup": 1, "repeats": repeats}
    print(f"  {name}: {rounds} round(s) per side, each in a fresh process: 1 warm-up generation per mode "
          f"(excluded), then {repeats} timed", flush=True)
    runs = peers.alternate([OURS, TORCH], "generate", args, rounds, log=None)
    ours, theirs = runs[OURS.label][0]["tokens"], runs[TORCH.label][0]["tokens"]
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
    print(f"  {name}: greedy tokens of tinygrad_lm and torch agree for {same} of {long_n}", flush=True)
    rows, out = [], {"greedy_tokens_agree": same, "runs": runs}
    for mode in ("cached", "recompute"):
        n = runs[OURS.label][0][mode]["new_tokens"]
        s = {label: peers.summarise([r[mode] for r in rs]) for label, rs in runs.items()}
        ours_tps, theirs_tps = n / s[OURS.label]["median_s"], n / s[TORCH.label]["median_s"]
        ratio = peers.ratio(s[TORCH.label], s[OURS.label])   # torch time / ours = our tokens/s / theirs
        out[mode] = {"new_tokens": n, "summaries": s, "tokens_per_s_tinygrad": ours_tps,
                     "tokens_per_s_torch": theirs_tps, "tinygrad_over_torch": ratio}
        rows.append([name, mode, n, ours_tps, theirs_tps,
                     f"{ratio['of_medians']:.2f} ({', '.join(f'{x:.2f}' for x in ratio['per_round'])})"])
    return rows, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats, tiny shape only")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OpenBLAS threads for NumPy (default 1); 0 leaves it as tinygrad_lm set it (see tinygrad_lm/_threads.py)")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch peer")
    ap.add_argument("--json", default="benchmarks/results/generate.json")
    args = ap.parse_args(argv)
    apply_blas_threads(ap, args.blas_threads)  # loads the kernels first (they pin 1 thread)
    has_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    note = None if has_torch else ("PyTorch peer left out (--no-torch)" if args.no_torch else
                                   "PyTorch is not installed (pip install -e '.[bench]'): tinygrad_lm only")
    if note:
        print(f"note: {note}")
    threads = {"openblas": blas_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}
    print(f"threads of this process (the per-position table; the peer comparison runs each side in its own "
          f"process with the user's environment): {threads}")
    peer_rows = []
    repeats = 3 if args.quick else 7
    shapes = {"tiny": SHAPES["tiny"]} if args.quick else SHAPES
    results, rows = {}, []
    for name, shape in shapes.items():
        tg.manual_seed(0)
        model = GPT(GPTConfig(**shape)).eval()
        T = shape["block_size"]
        n = T - 1  # fill the context exactly once
        step_times(model, 8, True, 1)  # warm-up (JIT, allocator)
        cached = np.median(step_times(model, n, True, repeats), axis=0)[1:]   # drop the prefill step
        full = np.median(step_times(model, n, False, max(1, repeats // 2)), axis=0)[1:]
        q = max(1, len(cached) // 4)
        quarters = [(f"{i * q + 2}-{min((i + 1) * q, len(cached)) + 1}", cached[i * q:(i + 1) * q].mean() * 1e3,
                     full[i * q:(i + 1) * q].mean() * 1e3) for i in range(4)]
        long_n = 4 * T if not args.quick else 2 * T
        tps = tokens_per_s(model, long_n, repeats)
        tps_nocache = tokens_per_s(model, T, max(1, repeats // 2), use_cache=False)
        results[name] = {"shape": shape, "ms_per_token_by_position_cached": cached.tolist(),
                         "ms_per_token_by_position_recompute": full.tolist(),
                         "tokens_per_s_cached": tps, "tokens_per_s_recompute": tps_nocache,
                         "long_generation_tokens": long_n, "repeats": repeats}
        for label, c, f in quarters:
            rows.append([name, label, c, f, f / c])
        rows.append([name, f"{long_n} tokens", f"{tps:,.0f} tok/s", f"{tps_nocache:,.0f} tok/s (ctx {T})", tps / tps_nocache])
        if has_torch:
            prow, results[name]["torch_peer"] = peer_comparison(name, model, long_n, 1 if args.quick else 3,
                                                                max(3, repeats // 2))
            peer_rows += prow
    print(format_table(["model", "context positions", "cached ms/token", "recompute ms/token", "speed-up"], rows))
    if has_torch:
        print("\nGreedy decoding, batch 1, against the PyTorch peer (same weights), each side in its own process, "
              "alternated rounds, warm-up excluded, medians; tinygrad / torch > 1: tinygrad_lm faster (per round)")
        print(format_table(["model", "mode", "new tokens", "tinygrad_lm tok/s", "torch tok/s", "tinygrad / torch"],
                           peer_rows))
    env, dropped = peers.user_env()
    path = write_json(args.json, {"results": results, "threads": threads, "torch_note": note,
                                  "peer_env": peers.relevant_env(env), "dropped_from_user_env": dropped},
                      machine=machine_info())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
