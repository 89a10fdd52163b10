"""Quantized inference: SmolLM2-135M with its Linear weights as float32, int8 or NF4 (block 64).

    python -m benchmarks.bench_quant --data PATH/tinyshakespeare.txt [--rounds 2]

Each setting in its own fresh process per round, rounds alternated (float32, int8, nf4, float32,
...): the weights' bytes, the resident memory after loading, greedy decoding speed (128 new
tokens, 1 warm-up excluded) and perplexity on the first --eval-tokens tokens of the text (windows
of --context tokens): what `tinygrad-lm generate|eval --quantize KIND` costs and saves."""
from __future__ import annotations

import argparse
import math
import statistics

from . import peers
from .common import format_table, machine_info, write_json

KINDS = (None, "int8", "nf4")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=8192)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--json", default="benchmarks/results/quant.json")
    args = ap.parse_args(argv)
    sides = [peers.Side(k or "float32", "benchmarks.side_quant", {"quantize": k}) for k in KINDS]
    task = {"model": args.model, "data": args.data, "prompt": "What is the capital of France?",
            "new_tokens": args.new_tokens, "repeats": 2, "eval_tokens": args.eval_tokens, "context": args.context}
    runs = {s.label: [] for s in sides}
    for r in range(args.rounds):
        for s in sides:
            res = peers.run_worker(s, "run", task)
            runs[s.label].append(res)
            print(f"  round {r + 1}/{args.rounds} {s.label:8s} {args.new_tokens / statistics.median(res['samples']):5.1f} tok/s, "
                  f"loss {res['eval_loss']:.4f}, RSS {res['rss_loaded'] / 2**20:,.0f} MiB, process "
                  f"{res['process']['wall_s']:.0f} s", flush=True)
    base = runs["float32"]
    rows = []
    for label, rs in runs.items():
        tps = [args.new_tokens / statistics.median(r["samples"]) for r in rs]
        loss = rs[0]["eval_loss"]
        same = sum(a == b for a, b in zip(rs[0]["tokens"], base[0]["tokens"]))
        rows.append([label, f"{rs[0]['weight_bytes'] / 2**20:,.0f}", f"{max(r['rss_loaded'] for r in rs) / 2**20:,.0f}",
                     f"{statistics.median(tps):.1f} ({', '.join(f'{t:.1f}' for t in tps)})", f"{loss:.4f}",
                     f"{math.exp(loss):.2f}", f"{math.exp(loss) / math.exp(base[0]['eval_loss']) - 1:+.1%}",
                     f"{same}/{len(base[0]['tokens'])}"])
    headers = ["weights", "weight MiB", "RSS after load MiB", "decode tok/s (rounds)", "loss", "perplexity",
               "vs float32", "greedy tokens as float32's"]
    print(format_table(headers, rows))
    write_json(args.json, {"args": vars(args), "runs": runs, "table": {"headers": headers, "rows": rows}}, machine_info())


if __name__ == "__main__":
    main()
