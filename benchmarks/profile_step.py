"""Where the milliseconds of one training step go: every op's forward and backward, the optimizer, gradient
clipping, and what is left (Python between ops, the autograd walk).

    python -m benchmarks.profile_step --config small [--steps 3] [--json PATH]

The benchmark workload's step (benchmarks.workload's model, batch and optimizer) under
tinygrad_lm.profile() after two warm-up steps; the table is per step. Matmuls run inside their ops
(Linear, MatMul, the reference attention): BLAS time shows under those names. The profiler's own
bookkeeping is measured and shown apart. `tinygrad-lm profile` does the same for a checkpoint or a
pretrained model. This is a diagnostic of our side only (no peer), run the way bench_train runs our side."""
from __future__ import annotations

import argparse
import json

from tinygrad_lm import profile   # first, as users do: tinygrad_lm's thread settings precede NumPy

from . import side_tinygrad  # noqa: E402
from .workload import CONFIGS, batch, model_fields  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=tuple(CONFIGS), default="small")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = CONFIGS[args.config]
    step = side_tinygrad.make_train_step(side_tinygrad.build(model_fields(cfg)))
    x, y = batch(cfg)
    for _ in range(2):   # warm-up: kernel compilation, the allocator's first requests
        step(x, y)
    with profile() as p:
        for _ in range(args.steps):
            step(x, y)
    print(f"{args.config}: {p.wall_s / args.steps * 1e3:,.1f} ms per step ({args.steps} steps after 2 warm-up)")
    print(p.table(steps=args.steps))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "steps": args.steps, **p.to_dict()}, f, indent=1)


if __name__ == "__main__":
    main()
