"""`tinygrad-lm scaling run | fit | predict | table`: measure a scaling law on this machine, fit it as
Chinchilla does, and compute with it (see tinygrad_lm.scaling)."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .common import UsageError

COMMANDS = ("run", "fit", "predict", "table")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number (e.g. 7e9), got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number (e.g. 7e9), got {text!r}")
    return value


def _budgets(text: str) -> tuple[float, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated FLOP budgets (e.g. 1e11,3e11,1e12), got {text!r}")
    return tuple(_positive(p) for p in parts)


def add_parser(sub) -> None:
    from ..scaling.sweep import DEFAULT_BUDGETS, DEFAULT_POINTS, QUICK_BUDGETS, QUICK_POINTS, SweepConfig
    p = sub.add_parser("scaling", help="IsoFLOP sweeps, Chinchilla's fits and a compute-optimal calculator",
                       description="Measure how loss scales with parameters and tokens on this machine (run), fit "
                                   "L = E + A/N^alpha + B/D^beta and the IsoFLOP power laws (fit), and compute with "
                                   "our fit or a published one (predict, table).")
    s = p.add_subparsers(dest="scaling_command", parser_class=type(p), metavar="{" + ",".join(COMMANDS) + "}")

    r = s.add_parser("run", help="train models of several sizes at each compute budget (resumable)")
    budgets = ",".join(f"{b:.0e}" for b in DEFAULT_BUDGETS)
    quick = ",".join(f"{b:.0e}" for b in QUICK_BUDGETS)
    r.add_argument("--budgets", type=_budgets, default=None, metavar="C1,C2,...",
                   help=f"training FLOPs per run, counted as Chinchilla's appendix does (default: {budgets}; "
                        f"--quick: {quick})")
    r.add_argument("--out", required=True, metavar="DIR",
                   help="sweep folder: runs.jsonl, sweep.json, runs/; the same command continues a killed sweep")
    r.add_argument("--quick", action="store_true",
                   help=f"the small sweep ({quick}, {QUICK_POINTS} sizes each: minutes instead of up to half an hour)")
    r.add_argument("--points", type=int, default=None, metavar="K",
                   help=f"model sizes per budget (default: {DEFAULT_POINTS}; --quick: {QUICK_POINTS})")
    d = SweepConfig()
    r.add_argument("--data", default=None, metavar="PATH", help="text file or folder (default: the built-in corpus)")
    r.add_argument("--vocab-size", "--vocab_size", dest="vocab_size", type=int, default=d.vocab_size, metavar="N",
                   help="tokens of the BPE trained on the data")
    r.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=d.batch_size, metavar="B",
                   help="sequences per step (every run, so all see the same evaluation batches)")
    r.add_argument("--seq-len", "--seq_len", dest="seq_len", type=int, default=d.seq_len, metavar="T",
                   help="context of every model")
    r.add_argument("--lr", type=float, default=d.learning_rate, metavar="X",
                   help="peak learning rate at width 64 (x 64/width for other widths)")
    r.add_argument("--seed", type=int, default=d.seed, metavar="N", help="seed of every run's weights and batches")
    r.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to train")

    f = s.add_parser("fit", help="Approach 2 and 3 fits of a sweep (writes DIR/fit.json and PNG plots)")
    f.add_argument("dir", metavar="DIR", help="a sweep folder (scaling run --out DIR)")
    f.add_argument("--json", action="store_true", help="print fit.json's content instead of the summary")
    f.add_argument("--bootstrap", type=int, default=100, metavar="N",
                   help="resamples for the confidence intervals (0: none)")

    for name, what in (("predict", "compute-optimal parameters, tokens and loss for a budget, a size or a token count"),
                       ("table", "named models: parameters, tokens, 6ND FLOPs, and a fit's loss and optimum")):
        q = s.add_parser(name, help=what)
        if name == "predict":
            given = q.add_mutually_exclusive_group(required=True)
            given.add_argument("--params", type=_positive, metavar="N", help="model size: the budget it is optimal for")
            given.add_argument("--flops", type=_positive, metavar="C", help="compute budget (C = 6 N D)")
            given.add_argument("--tokens", type=_positive, metavar="D", help="training tokens: the model they suit")
        q.add_argument("--fit", default="epoch", metavar="chinchilla|epoch|DIR",
                       help="Chinchilla's published fit, Epoch AI's 2024 replication, or a sweep folder we fitted")
        q.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    if args.scaling_command is None:
        raise UsageError(f"scaling: choose a command: {', '.join(COMMANDS)}")
    return {"run": _run, "fit": _fit, "predict": _predict, "table": _table}[args.scaling_command](args)


def _run(args) -> int:
    from ..scaling.sweep import (DEFAULT_BUDGETS, DEFAULT_POINTS, QUICK_BUDGETS, QUICK_POINTS, SweepConfig, plan,
                                 run_sweep)
    from .common import compile_notice
    cfg = SweepConfig(budgets=args.budgets or (QUICK_BUDGETS if args.quick else DEFAULT_BUDGETS),
                      points=args.points or (QUICK_POINTS if args.quick else DEFAULT_POINTS), data=args.data,
                      vocab_size=args.vocab_size, batch_size=args.batch_size, seq_len=args.seq_len,
                      learning_rate=args.lr, seed=args.seed, device=args.device)
    plan(cfg)   # a budget too small for the grid fails before anything is printed or written
    compile_notice(cfg.device)
    t0 = time.perf_counter()
    result = run_sweep(args.out, cfg, log=lambda msg: print(msg, flush=True))
    if result["interrupted"]:
        return 130
    print(f"{result['trained']} runs trained in {time.perf_counter() - t0:.0f} s; {len(result['runs'])} in "
          f"{args.out}/runs.jsonl; fit them with: tinygrad-lm scaling fit {args.out}")
    return 0


def _fit(args) -> int:
    from ..scaling.fit import HOFFMANN_GRID, fit_runs
    from ..scaling.plots import write_plots
    from ..scaling.predict import FIT_FILE, PUBLISHED
    from ..scaling.sweep import RUNS_FILE, finished_runs
    folder = Path(args.dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"sweep folder not found: {folder}")
    runs = finished_runs(folder)
    if not runs:
        raise FileNotFoundError(f"{folder} holds no finished runs ({RUNS_FILE}); run a sweep first: "
                                f"tinygrad-lm scaling run --out {folder}")
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if not args.json:
        starts = math.prod(len(v) for v in HOFFMANN_GRID.values())
        print(f"fitting {len(runs)} runs (Approach 3 from {starts:,} starting points, then {args.bootstrap} bootstrap "
              "resamples; about a minute)...", file=sys.stderr, flush=True)
    try:
        result = fit_runs(runs, n_boot=args.bootstrap)
    except ImportError as e:   # scipy is an extra
        raise UsageError(str(e)) from None
    (folder / FIT_FILE).write_text(json.dumps(result, indent=1) + "\n")
    plots = write_plots(folder, runs, result)
    if args.json:
        print(json.dumps(result))
        return 0
    a2, a3 = result["approach2"], result["approach3"]
    print("Approach 2 (IsoFLOP parabolas):")
    for c in a2["curves"]:
        print(f"  C {c['budget']:.3g}: N_opt {c['n_opt']:,.0f}  D_opt {c['d_opt']:,.0f}  "
              f"({c['d_opt'] / c['n_opt']:.1f} tokens/param)  loss {c['loss']:.4f}"
              + ("" if c["inside"] else "  (minimum outside the sizes measured: extrapolated)"))
    for budget, why in a2["skipped"]:
        print(f"  C {budget:.3g}: skipped, {why}")
    if a2["a"] is not None:
        print(f"  N_opt ~ C^{a2['a']:.3f}, D_opt ~ C^{a2['b']:.3f}")
    else:
        print("  power laws need minima at 2 or more budgets")
    ci = a3["ci"]

    def show(k):
        return f"{a3[k]:.4g}" + (f" [{ci[k][0]:.3g}, {ci[k][1]:.3g}]" if k in ci else "")
    print("Approach 3 (L = E + A/N^alpha + B/D^beta, Huber on log L; "
          + (f"{a3.get('level', 0.8):.0%} bootstrap intervals of {a3['bootstrap']} resamples):" if ci else "no bootstrap):"))
    print("  " + "  ".join(f"{k} {show(k)}" for k in ("E", "A", "B", "alpha", "beta")))
    print(f"  N_opt ~ C^{show('a')}, D_opt ~ C^{show('b')}; at C = {result['tokens_per_param']['approach3_at_flops']:.3g} "
          f"(6ND): {result['tokens_per_param']['approach3']:.1f} tokens/param")
    for name, pub in PUBLISHED.items():
        s = pub["alpha"] + pub["beta"]
        print(f"  {name:<10} alpha {pub['alpha']:.3f}  beta {pub['beta']:.3f}  a {pub['beta'] / s:.3f}  "
              f"b {pub['alpha'] / s:.3f}  ({pub['source']})")
    print(f"wrote {folder / FIT_FILE}" + (", " + ", ".join(str(p) for p in plots) if plots else
                                          "; plots skipped: matplotlib is not installed (pip install -e '.[plot]')"))
    return 0


def _predict(args) -> int:
    from ..scaling.predict import compute_optimal, load_fit
    fit = load_fit(args.fit)
    result = compute_optimal(fit, params=args.params, flops=args.flops, tokens=args.tokens)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"compute-optimal under {fit['source']}:")
    print(f"  params {result['params']:.4g}  tokens {result['tokens']:.4g} ({result['tokens'] / result['params']:.1f} "
          f"per parameter)  FLOPs {result['flops']:.4g} (6ND)  loss {result['loss']:.4f} nats/token")
    return 0


def _table(args) -> int:
    from ..scaling.predict import load_fit, named_models_table
    fit = load_fit(args.fit)
    rows = named_models_table(fit)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'model':<16}{'params':>9}{'tokens':>9}{'tok/param':>10}{'6ND FLOPs':>11}{'loss':>8}"
          f"{'optimal N':>11}{'optimal D':>11}")
    for r in rows:
        print(f"{r['model']:<16}{r['params']:>9.3g}{r['tokens']:>9.3g}{r['tokens_per_param']:>10.0f}{r['flops']:>11.3g}"
              f"{r['loss']:>8.3f}{r['optimal_params']:>11.3g}{r['optimal_tokens']:>11.3g}")
    print(f"loss and the compute-optimal N, D at the same FLOPs: {fit['source']}")
    print("sources (FLOPs are 6ND):")
    for r in rows:
        print(f"  {r['model']}: {r['source']}")
    return 0
