"""Where the milliseconds of one training step go: every op's forward and backward, the
optimizer, gradient clipping, and what is left (Python between ops, the autograd walk).

    python -m benchmarks.profile_step --config small [--steps 3] [--json PATH]

Each Function subclass's forward/backward, AdamW.step, clip_grad_norm and zero_grad are wrapped
with a timer for the measured steps (after warm-up steps). Matmuls run inside their ops (Linear,
MatMul, the reference attention): BLAS time shows under those names. The timers add about a microsecond per call: the tiny config's 'rest' includes them.
This is a diagnostic of our side only (no peer), run the way bench_train runs our side."""
from __future__ import annotations

import argparse
import collections
import functools
import json
import time

import tinygrad_lm  # noqa: F401  (first, as users do)

from tinygrad_lm import optim  # noqa: E402
from tinygrad_lm.tensor import Function  # noqa: E402

from . import side_tinygrad  # noqa: E402
from .workload import CONFIGS, batch, model_fields  # noqa: E402

TIMES: dict[str, float] = collections.defaultdict(float)
CALLS: dict[str, int] = collections.defaultdict(int)


def _timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0
            CALLS[name] += 1
    return wrapper


def _all_functions():
    todo, seen = list(Function.__subclasses__()), set()
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.add(cls)
            todo.extend(cls.__subclasses__())
    return seen


def instrument():
    """Wrap every op's forward/backward, the optimizer step, zero_grad and the clipping."""
    for cls in _all_functions():
        for phase in ("forward", "backward", "add_grad_into"):
            if phase in cls.__dict__:
                setattr(cls, phase, _timed(f"{cls.__name__}.{phase}", cls.__dict__[phase]))
    optim.AdamW.step = _timed("AdamW.step", optim.AdamW.step)
    optim.Optimizer.zero_grad = _timed("zero_grad", optim.Optimizer.zero_grad)
    side_tinygrad.clip_grad_norm = _timed("clip_grad_norm", optim.clip_grad_norm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=tuple(CONFIGS), default="small")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = CONFIGS[args.config]
    model = side_tinygrad.build(model_fields(cfg))
    step = side_tinygrad.make_train_step(model)
    x, y = batch(cfg)
    step(x, y)  # warm-up: kernel compilation, allocator
    instrument()
    step = side_tinygrad.make_train_step(model)  # picks up the wrapped clip_grad_norm
    step(x, y)
    TIMES.clear(), CALLS.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step(x, y)
    total = (time.perf_counter() - t0) / args.steps
    rows = sorted(((v / args.steps, k) for k, v in TIMES.items()), reverse=True)
    accounted = sum(v for v, _ in rows)
    print(f"{args.config}: {total * 1e3:,.1f} ms per step ({args.steps} steps after 2 warm-up)")
    print(f"{'part':44s} {'ms/step':>9s} {'share':>6s} {'calls':>6s}")
    for v, k in rows:
        print(f"{k:44s} {v * 1e3:9.2f} {v / total:6.1%} {CALLS[k] // args.steps:6d}")
    print(f"{'rest (Python between ops, autograd walk, batch)':44s} {(total - accounted) * 1e3:9.2f} "
          f"{(total - accounted) / total:6.1%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "ms_per_step": total * 1e3,
                       "parts_ms": {k: v * 1e3 for v, k in rows}}, f, indent=1)


if __name__ == "__main__":
    main()
