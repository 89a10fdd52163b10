"""The tiny-Shakespeare recipe trained by the PyTorch peer, in lockstep with `tinygrad-lm train`.

    python -m benchmarks.recipe_peer --data PATH/tinyshakespeare.txt [--seed 1337] [--json PATH]

Same initial weights (a tinygrad_lm GPT built with the seed, copied by state_dict name), the
same batches (tinygrad_lm.data's get_batch with the trainer's seeded generator), AdamW with
nanoGPT's parameter groups, the same warmup + cosine schedule and gradient clipping. It then
reports the validation loss the way `tinygrad-lm train` (20 fixed batches) and `tinygrad-lm eval`
(the whole val split, non-overlapping windows) do, so the two frameworks' quality can be
compared on this machine rather than against a number from elsewhere."""
from __future__ import annotations

import tinygrad_lm  # noqa: F401  (first, as users do: its thread settings precede NumPy; this package no longer loads it)

import argparse
import math
import time

import numpy as np

from tinygrad_lm.data import load_dataset
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.optim import cosine_with_warmup
from tinygrad_lm.presets import get_preset
from tinygrad_lm.tensor import manual_seed

from .common import write_json
from .torch_gpt import from_tinygrad, torch_or_none


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--json", default="benchmarks/results/recipe_peer.json")
    args = ap.parse_args(argv)
    torch, why = torch_or_none()
    if torch is None:
        raise SystemExit(why)
    if args.threads:
        torch.set_num_threads(args.threads)
    p = get_preset("tiny")
    tc = p["train"]
    data, tok = load_dataset(args.data, tokenizer="char")
    cfg = GPTConfig(**{**p["model"], "vocab_size": tok.vocab_size})
    manual_seed(args.seed)
    peer = from_tinygrad(GPT(cfg))
    decay = [q for q in peer.parameters() if q.dim() >= 2]
    no_decay = [q for q in peer.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc["learning_rate"], betas=(tc["beta1"], tc["beta2"]), eps=1e-8)
    rng = np.random.default_rng(args.seed)
    T, B = cfg.block_size, tc["batch_size"]

    def evaluate():  # as Trainer.evaluate: eval_iters batches from a fixed-seed generator
        peer.eval()
        out = {}
        with torch.no_grad():
            for split in ("train", "val"):
                r = np.random.default_rng(args.seed + 1)
                out[split] = float(np.mean([peer(*map(torch.from_numpy, data.get_batch(split, B, T, r)))[1].item()
                                            for _ in range(tc["eval_iters"])]))
        peer.train()
        return out

    log = []
    t0 = time.perf_counter()
    for it in range(tc["max_iters"] + 1):
        if it % tc["eval_interval"] == 0 or it == tc["max_iters"]:
            ev = evaluate()
            log.append({"iter": it, **ev})
            print(f"step {it}: train loss {ev['train']:.4f}, val loss {ev['val']:.4f}", flush=True)
        if it == tc["max_iters"]:
            break
        lr = cosine_with_warmup(it, tc["learning_rate"], tc["warmup_iters"], tc["lr_decay_iters"], tc["min_lr"])
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = map(torch.from_numpy, data.get_batch("train", B, T, rng))
        _, loss = peer(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), tc["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - t0
    # the whole val split in non-overlapping windows, as `tinygrad-lm eval`
    val = np.asarray(data.val, dtype=np.int64)
    total, count = 0.0, 0
    peer.eval()
    with torch.no_grad():
        for s in range(0, len(val) - 1, T):
            x, y = val[s:s + T], val[s + 1:s + T + 1]
            x = x[:len(y)]
            _, loss = peer(torch.from_numpy(x[None]), torch.from_numpy(y[None]))
            total += loss.item() * len(y)
            count += len(y)
    full = total / count
    print(f"full val split: loss {full:.4f}  perplexity {math.exp(full):.3f}  ({count:,} tokens); "
          f"training took {elapsed:.0f} s")
    write_json(args.json, {"seed": args.seed, "evals": log, "full_val_loss": full, "seconds": elapsed,
                           "torch_threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
