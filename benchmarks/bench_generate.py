"""Generation speed with the KV cache: tokens/s, and per-token time as the context grows.

    python -m benchmarks.bench_generate [--quick] [--blas-threads N] [--no-torch] [--json PATH]

For each model shape (random weights: speed does not depend on them) we decode from a
1-token prompt and time every step, repeated; the median time of each step shows whether
per-token cost stays flat as the context fills (it should with the cache, and grow without).
Then tokens/s over a long generation that runs past block_size (sliding-window re-prefills
included).

PyTorch peer (when installed; else a note and tinygrad_lm rows only): the same model (weights
copied by state_dict name into benchmarks/torch_gpt.py), greedy decoding from the same 1-token
prompt, interleaved with tinygrad_lm's greedy decoding:

    cached     KV cache, 4 x block_size new tokens (2 x with --quick): the window slides, so
               this includes tinygrad_lm's re-prefills, which the torch loop copies exactly
    recompute  no cache: every step re-runs the whole window, like nanoGPT's generate;
               block_size new tokens (the context fills once)

Both are single-sequence (batch 1), in torch.no_grad / tinygrad_lm.no_grad. Before timing, the
greedy tokens of both frameworks are compared (same weights: they should match).
tokens/s = new tokens / median wall time; "tinygrad / torch" is the ratio of tokens/s (> 1:
tinygrad_lm faster), as the median of paired per-repeat ratios. OMP_WAIT_POLICY defaults to passive and OpenBLAS to 1 thread (see
benchmarks/README.md: decode matmuls are tiny, and 2 threads on a busy 2-core machine stall).
"""
from __future__ import annotations

import os

import argparse
import statistics
import time

import numpy as np

import tinygrad_lm as tg
from tinygrad_lm.models import GPT, GPTConfig

from .common import (apply_blas_threads, blas_threads, format_table, interleaved, paired_ratio,
                     write_json)
from .torch_gpt import torch_or_none

SHAPES = {
    "tiny": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64),
    "small": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256),
}


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


def peer_comparison(name, model, torch, long_n, repeats) -> tuple[list, dict]:
    """Greedy tokens/s of tinygrad_lm and the PyTorch peer, cached and recomputing, interleaved."""
    from .torch_gpt import from_tinygrad
    peer = from_tinygrad(model).eval()
    T = model.config.block_size
    prompt, tprompt = np.zeros((1, 1), np.int64), torch.zeros((1, 1), dtype=torch.long)
    ours = model.generate(prompt, long_n, temperature=0.0).data[0, 1:]
    theirs = peer.generate(tprompt, long_n).numpy()[0, 1:]
    same = int(np.argmin(ours == theirs)) if (ours != theirs).any() else len(ours)
    print(f"  {name}: greedy tokens of tinygrad_lm and torch agree for {same} of {long_n}", flush=True)
    lengths = {"cached": long_n, "recompute": T}
    cases = {
        "tinygrad cached": lambda: model.generate(prompt, long_n, temperature=0.0, use_cache=True),
        "torch cached": lambda: peer.generate(tprompt, long_n, use_cache=True),
        "tinygrad recompute": lambda: model.generate(prompt, T, temperature=0.0, use_cache=False),
        "torch recompute": lambda: peer.generate(tprompt, T, use_cache=False),
    }
    stats = interleaved(cases, repeats=repeats, warmup=0, number=1)   # the agreement check above warmed both
    rows, out = [], {"greedy_tokens_agree": same, "tokens": lengths, "stats": stats}
    for kind, n in lengths.items():
        ours_tps = n / (stats[f"tinygrad {kind}"].median / 1e9)
        theirs_tps = n / (stats[f"torch {kind}"].median / 1e9)
        out[f"tokens_per_s_tinygrad_{kind}"], out[f"tokens_per_s_torch_{kind}"] = ours_tps, theirs_tps
        ratio = paired_ratio(stats[f"torch {kind}"], stats[f"tinygrad {kind}"])   # torch time / ours = our tok/s / theirs
        out[f"tinygrad_over_torch_{kind}"] = ratio
        rows.append([name, kind, n, ours_tps, theirs_tps, ratio])
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
    torch, note = (None, "PyTorch peer left out (--no-torch)") if args.no_torch else torch_or_none()
    if note:
        print(f"note: {note}")
    threads = {"openblas": blas_threads(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
               "torch": torch.get_num_threads() if torch else None}
    print(f"threads: {threads}")
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
        if torch is not None:
            prow, results[name]["torch_peer"] = peer_comparison(name, model, torch, long_n, max(3, repeats // 2))
            peer_rows += prow
    print(format_table(["model", "context positions", "cached ms/token", "recompute ms/token", "speed-up"], rows))
    if torch is not None:
        print("\nGreedy decoding, batch 1, against the PyTorch peer (same weights), interleaved; "
              "tinygrad / torch > 1: tinygrad_lm faster")
        print(format_table(["model", "mode", "new tokens", "tinygrad_lm tok/s", "torch tok/s", "tinygrad / torch"],
                           peer_rows))
    path = write_json(args.json, {"results": results, "threads": threads, "torch_note": note,
                                  "torch_version": torch.__version__ if torch else None})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
