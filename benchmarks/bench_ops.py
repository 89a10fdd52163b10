"""Hot ops: the reference (readable NumPy) against the fast Numba kernel, forward and backward.

    python -m benchmarks.bench_ops [--quick] [--config tiny|small|both] [--blas-threads N] [--no-torch] [--json PATH]

For each op of the kernel table (``backend.reference(op)`` against
``tinygrad_lm.kernels.cpu.ops.FAST[op]``) on the shapes of the two GPT configs,

    tiny:  n_layer 4, n_head 4, n_embd 128, block 64,  batch 12
    small: n_layer 6, n_head 6, n_embd 384, block 256, batch 64

we time the forward and the backward (given the forward's saved outputs) separately, all
candidates of one op interleaved (reference, fast[, torch] x fwd, bwd), and report medians and
the speed-up reference / fast (median of paired ratios; > 1 means the kernel is faster).
"fwd+bwd" is, per repeat, the forward sample plus the backward sample taken in that repeat. The ops and their
shapes (B batch, nh heads, T context, C width, hs = C / nh, V = 65 characters):

    softmax        rows of (B, nh, T, T)           cross_entropy  logits (B*T, V), mean loss
    layer_norm     (B*T, C), weight and bias       rms_norm       (B*T, C), weight
    gelu (exact)   (B*T, 4C)                       attention      q, k, v (B, nh, T, hs), causal,
    embedding      backward only: ids (B, T),                     laid out as the model makes them
                   grad (B, T, C) -> (V, C)                       (views of one (B, T, 3C) array)
    adamw          one update of every parameter of the GPT (its shapes: ~0.8M / ~10.7M values)

The tinygrad_lm columns call the (forward, backward) pairs directly, without the autograd
engine (bench_engine measures that). With PyTorch installed, a torch column runs the same
math the PyTorch way: the op under ``torch.no_grad()`` for the forward, and
``torch.autograd.grad`` through a recorded forward for the backward (the recording is done
untimed; autograd's own overhead, a few us, is inside the torch backward). torch/fast > 1
means the fast kernel beats PyTorch. Without torch the column is left out (a note says so).
The torch column is a per-op DIAGNOSTIC, not a peer comparison: it runs in this process, next to
tinygrad_lm's kernels and thread settings. The peer comparison is bench_train's (each framework
in its own process, benchmarks/peers.py).

Targets (issue "Fast CPU path"), judged on the small config: attention forward+backward at
least 2x the reference at (B=64, nh=6, T=256, hs=64); layer norm forward+backward at least 4x.

Thread settings are printed and saved: OpenBLAS (the reference attention's matmuls), Numba's
threads (the fast kernels), torch's threads. tinygrad_lm is imported first, as users do, so it
makes its own settings for this process: OpenBLAS's idle threads sleep (tinygrad_lm/_threads.py)
and OpenMP waits passively once the kernels load (spinning threads starve the other core on
2-core machines).
"""
from __future__ import annotations

import tinygrad_lm  # noqa: F401  (first, as users do: its thread settings precede NumPy; this package no longer loads it)

import os

import argparse
import math
import time

import numpy as np

from tinygrad_lm import backend, optim  # noqa: F401  (optim registers the adamw reference)
from tinygrad_lm.models import GPT, GPTConfig

from .common import (Case, apply_blas_threads, Stats, blas_threads, format_table, interleaved, paired_ratio,
                     us, write_json)
from .torch_gpt import torch_or_none

CONFIGS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=64),
}
VOCAB = 65
TARGETS = {"attention": 2.0, "layer_norm": 4.0}   # minimum reference/fast speed-up, fwd+bwd, small config
TARGET_CONFIG = "small"


def _f32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# ---- one op = forward/backward callables for each implementation ------------------------------
# Each builder returns {impl: {pass: callable}} for impl in ("reference", "fast"[, "torch"]).
# The backward of each impl is timed on outputs its own forward saved (computed once, untimed).

def _pair_passes(fwd, bwd, saved):
    """fwd() -> saved outputs; bwd(saved) -> grads. The 'bwd' pass reuses `saved` computed once."""
    return {"fwd": fwd, "bwd": lambda: bwd(saved)}


def _torch_passes(torch, forward, inputs, grad_out):
    """forward(*inputs) -> output tensor; inputs require grad. Backward = autograd.grad of a
    forward recorded untimed (a Case with setup), so only the backward is timed."""
    def fwd():
        with torch.no_grad():
            return forward(*inputs)

    def record():
        with torch.enable_grad():
            return forward(*inputs)

    def bwd(out):
        return torch.autograd.grad(out, inputs, grad_out)

    return {"fwd": fwd, "bwd": Case(bwd, setup=record)}


def softmax_case(cfg, rng, torch):
    B, nh, T = cfg["batch"], cfg["n_head"], cfg["block_size"]
    x, g = _f32(rng, (B, nh, T, T)), _f32(rng, (B, nh, T, T))
    out = {}
    for name, impl in _impls("softmax"):
        out[name] = _pair_passes(lambda impl=impl: impl.forward(x), lambda y, impl=impl: impl.backward(y, g),
                                 impl.forward(x))
    if torch:
        out["torch"] = _torch_passes(torch, lambda t: torch.softmax(t, -1), [_t(torch, x, True)], _t(torch, g))
    return out, f"(B, nh, T, T) = {x.shape}"


def cross_entropy_case(cfg, rng, torch):
    N = cfg["batch"] * cfg["block_size"]
    z, t = _f32(rng, (N, VOCAB)), rng.integers(0, VOCAB, N).astype(np.int64)
    row_scale = np.full(N, 1.0 / N, np.float32)   # the mean's gradient
    out = {}
    for name, impl in _impls("cross_entropy"):
        out[name] = _pair_passes(lambda impl=impl: impl.forward(z, t, -1),
                                 lambda s, impl=impl: impl.backward(z, s[1], t, -1, row_scale),
                                 impl.forward(z, t, -1))
    if torch:
        tt = torch.from_numpy(t)
        out["torch"] = _torch_passes(torch, lambda a: torch.nn.functional.cross_entropy(a, tt, ignore_index=-1),
                                     [_t(torch, z, True)], torch.tensor(1.0))
    return out, f"logits (B*T, V) = {z.shape}"


def layer_norm_case(cfg, rng, torch):
    N, C = cfg["batch"] * cfg["block_size"], cfg["n_embd"]
    x, g = _f32(rng, (N, C)), _f32(rng, (N, C))
    w, b = 1 + _f32(rng, C, 0.1), _f32(rng, C, 0.1)
    out = {}
    for name, impl in _impls("layer_norm"):
        out[name] = _pair_passes(lambda impl=impl: impl.forward(x, w, b, 1e-5),
                                 lambda s, impl=impl: impl.backward(g, x, s[1], s[2], w),
                                 impl.forward(x, w, b, 1e-5))
    if torch:
        out["torch"] = _torch_passes(torch, lambda a, ww, bb: torch.nn.functional.layer_norm(a, (C,), ww, bb, 1e-5),
                                     [_t(torch, x, True), _t(torch, w, True), _t(torch, b, True)], _t(torch, g))
    return out, f"(B*T, C) = {x.shape}"


def rms_norm_case(cfg, rng, torch):
    N, C = cfg["batch"] * cfg["block_size"], cfg["n_embd"]
    x, g, w = _f32(rng, (N, C)), _f32(rng, (N, C)), 1 + _f32(rng, C, 0.1)
    out = {}
    for name, impl in _impls("rms_norm"):
        out[name] = _pair_passes(lambda impl=impl: impl.forward(x, w, 1e-6),
                                 lambda s, impl=impl: impl.backward(g, x, s[1], w),
                                 impl.forward(x, w, 1e-6))
    if torch and hasattr(torch.nn.functional, "rms_norm"):
        out["torch"] = _torch_passes(torch, lambda a, ww: torch.nn.functional.rms_norm(a, (C,), ww, 1e-6),
                                     [_t(torch, x, True), _t(torch, w, True)], _t(torch, g))
    return out, f"(B*T, C) = {x.shape}"


def gelu_case(cfg, rng, torch):
    N, C = cfg["batch"] * cfg["block_size"], cfg["n_embd"]
    x, g = _f32(rng, (N, 4 * C)), _f32(rng, (N, 4 * C))
    out = {}
    for name, impl in _impls("gelu"):
        out[name] = _pair_passes(lambda impl=impl: impl.forward(x, "none"),
                                 lambda _, impl=impl: impl.backward(x, g, "none"), None)
    if torch:
        out["torch"] = _torch_passes(torch, torch.nn.functional.gelu, [_t(torch, x, True)], _t(torch, g))
    return out, f"(B*T, 4C) = {x.shape}"


def attention_case(cfg, rng, torch):
    B, nh, T, C = cfg["batch"], cfg["n_head"], cfg["block_size"], cfg["n_embd"]
    hs = C // nh
    # As CausalSelfAttention makes them: q, k, v are (B, nh, T, hs) views of one (B, T, 3C) array,
    # and the incoming gradient is a view of a (B, T, C) array.
    qkv = _f32(rng, (B, T, 3, nh, hs))
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    dout = _f32(rng, (B, T, nh, hs)).transpose(0, 2, 1, 3)
    scale = 1.0 / math.sqrt(hs)
    out = {}
    for name, impl in _impls("attention"):
        out[name] = _pair_passes(lambda impl=impl: impl.forward(q, k, v, scale, True),
                                 lambda s, impl=impl: impl.backward(q, k, v, s[0], s[1], dout, scale, True),
                                 impl.forward(q, k, v, scale, True))
    if torch:
        def forward(a):  # the same views of one (B, T, 3, nh, hs) tensor; its grad collects dq, dk, dv
            tq, tk, tv = (a[:, :, i].transpose(1, 2) for i in range(3))
            return torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        out["torch"] = _torch_passes(torch, forward, [_t(torch, qkv, True)], torch.from_numpy(dout))
    return out, f"q, k, v (B, nh, T, hs) = {q.shape}"


def embedding_case(cfg, rng, torch):
    B, T, C = cfg["batch"], cfg["block_size"], cfg["n_embd"]
    ids, g = rng.integers(0, VOCAB, (B, T)).astype(np.int64), _f32(rng, (B, T, C))
    out = {}
    for name, impl in _impls("embedding"):
        out[name] = {"bwd": lambda impl=impl: impl.backward(ids, g, VOCAB)}
    if torch:
        tids, weight = torch.from_numpy(ids), _t(torch, _f32(rng, (VOCAB, C)), True)
        passes = _torch_passes(torch, lambda w: torch.nn.functional.embedding(tids, w), [weight], _t(torch, g))
        out["torch"] = {"bwd": passes["bwd"]}
    return out, f"grad (B, T, C) = {g.shape} -> ({VOCAB}, {C})"


def adamw_case(cfg, rng, torch):
    model = GPT(GPTConfig(vocab_size=VOCAB, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                          block_size=cfg["block_size"]))
    shapes = [p.shape for p in model.parameters()]
    del model
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)
    out = {}
    for name, impl in _impls("adamw"):
        ps = [_f32(rng, s, 0.02) for s in shapes]
        gs = [_f32(rng, s, 0.01) for s in shapes]
        ms, vs = [np.zeros(s, np.float32) for s in shapes], [np.zeros(s, np.float32) for s in shapes]

        def update(impl=impl, ps=ps, gs=gs, ms=ms, vs=vs):
            for p, g, m, v in zip(ps, gs, ms, vs):
                impl.forward(p, g, m, v, 10, **hyper)   # step 10: bias corrections like mid-training
        out[name] = {"update": update}
    if torch:
        params = [torch.nn.Parameter(torch.from_numpy(_f32(rng, s, 0.02))) for s in shapes]
        for p in params:
            p.grad = torch.from_numpy(_f32(rng, p.shape, 0.01))
        opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        out["torch"] = {"update": opt.step}
    n = sum(int(np.prod(s)) for s in shapes)
    return out, f"{len(shapes)} tensors, {n:,} values"


OPS = {
    "softmax": softmax_case,
    "cross_entropy": cross_entropy_case,
    "layer_norm": layer_norm_case,
    "rms_norm": rms_norm_case,
    "gelu": gelu_case,
    "attention": attention_case,
    "embedding": embedding_case,
    "adamw": adamw_case,
}


def _impls(op):
    fast = backend.fast_table("cpu").get(op)
    if fast is None:
        raise RuntimeError(f"no fast CPU kernel for {op!r} (is Numba installed?)")
    return [("reference", backend.reference(op)), ("fast", fast)]


def _t(torch, a, requires_grad=False):
    t = torch.from_numpy(np.ascontiguousarray(a)).clone()
    return t.requires_grad_(requires_grad)


# ---- running ---------------------------------------------------------------------------------

def _once(case: Case):
    return case.fn(case.setup()) if case.setup is not None else case.fn()


def _batched(case: Case, n: int) -> Case:
    """The case run n times per call (so a sample of a us-scale op lasts long enough to time)."""
    if n == 1:
        return case
    if case.setup is None:
        return Case(lambda: [case.fn() for _ in range(n)])
    return Case(lambda args: [case.fn(a) for a in args], setup=lambda: [case.setup() for _ in range(n)])


def time_cases(cases: dict, repeats: int, min_sample_ns: float = 2e6) -> dict[str, Stats]:
    """Interleaved per-call times. Each case runs twice first (compile, allocate; the second call
    sets how many calls make one sample), so a case of seconds costs repeats + 2 calls, not the
    repeats + 3 + warm-up of a full calibration."""
    cases = {k: v if isinstance(v, Case) else Case(v) for k, v in cases.items()}
    numbers = {}
    for k, c in cases.items():
        _once(c)
        t0 = time.perf_counter_ns()
        _once(c)
        numbers[k] = max(1, min(10_000, math.ceil(min_sample_ns / max(time.perf_counter_ns() - t0, 1))))
    stats = interleaved({k: _batched(c, numbers[k]) for k, c in cases.items()}, repeats=repeats, warmup=0, number=1)
    return {k: Stats([x / numbers[k] for x in st.samples], numbers[k]) for k, st in stats.items()}


def run_config(name, cfg, torch, repeats, only=None):
    rng = np.random.default_rng(0)
    results = []
    for op, build in OPS.items():
        if only and op not in only:
            continue
        cases, shape = build(cfg, rng, torch)
        flat = {f"{impl}/{p}": fn for impl, passes in cases.items() for p, fn in passes.items()}
        stats = time_cases(flat, repeats)
        passes = list(cases["reference"])
        if passes == ["fwd", "bwd"]:  # forward + backward: the sum of each repeat's two samples
            passes.append("fwd+bwd")
            for impl in cases:
                f, b = stats[f"{impl}/fwd"], stats[f"{impl}/bwd"]
                stats[f"{impl}/fwd+bwd"] = Stats([x + y for x, y in zip(f.samples, b.samples)], 1)
        for p in passes:
            per = {impl: stats[f"{impl}/{p}"] for impl in cases if f"{impl}/{p}" in stats}
            row = {"config": name, "op": op, "shape": shape, "pass": p, "stats": per,
                   "speedup": paired_ratio(per["reference"], per["fast"])}
            if "torch" in per:
                row["torch_over_fast"] = paired_ratio(per["torch"], per["fast"])
            results.append(row)
            tail = f", torch {us(per['torch'].median):10.1f} us" if "torch" in per else ""
            print(f"  {name:5s} {op:13s} {p:7s} reference {us(per['reference'].median):10.1f} us, "
                  f"fast {us(per['fast'].median):10.1f} us{tail}  speed-up {row['speedup']:.2f}x", flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run; noisy numbers)")
    ap.add_argument("--config", choices=["tiny", "small", "both"], default="both")
    ap.add_argument("--only", nargs="+", choices=list(OPS), help="time these ops only")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="OpenBLAS threads for NumPy (default 1: with the other core busy, 2 threads made the "
                         "reference attention's matmuls ~10x slower); 0 leaves it as tinygrad_lm set it "
                         "(see tinygrad_lm/_threads.py)")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch column")
    ap.add_argument("--json", default="benchmarks/results/ops.json")
    args = ap.parse_args(argv)
    apply_blas_threads(ap, args.blas_threads)  # loads the kernels first (they pin 1 thread)
    torch, note = (None, "PyTorch column left out (--no-torch)") if args.no_torch else torch_or_none()
    if note:
        print(f"note: {note}")
    import numba
    threads = {"openblas": blas_threads(), "numba": numba.get_num_threads(), "numba_layer": None,
               "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
               "torch": torch.get_num_threads() if torch else None}
    repeats = 3 if args.quick else 11
    configs = list(CONFIGS) if args.config == "both" else [args.config]
    load_before = os.getloadavg()
    print(f"threads: {threads}; {repeats} interleaved repeats after 2 untimed calls; load {load_before[0]:.2f}")
    results = []
    for name in configs:
        results += run_config(name, CONFIGS[name], torch, repeats, args.only)
    try:
        threads["numba_layer"] = numba.threading_layer()
    except ValueError:
        pass

    headers = ["config", "op", "shape", "pass", "reference us", "fast us", "speed-up"]
    if torch:
        headers += ["torch us", "torch/fast"]
    rows = []
    for r in results:
        s = r["stats"]
        row = [r["config"], r["op"], r["shape"], r["pass"], us(s["reference"].median), us(s["fast"].median),
               r["speedup"]]
        if torch:
            row += [us(s["torch"].median), r["torch_over_fast"]] if "torch" in s else ["-", "-"]
        rows.append(row)
    print("\nMedian us per call; speed-up = reference / fast (median of paired ratios)"
          + ("; torch/fast > 1: the fast kernel beats PyTorch" if torch else ""))
    print(format_table(headers, rows))

    verdicts = []
    for op, target in TARGETS.items():
        got = [r for r in results if r["op"] == op and r["pass"] == "fwd+bwd"]
        for r in got:
            judged = r["config"] == TARGET_CONFIG
            ok = r["speedup"] >= target if judged else None
            verdicts.append({"op": op, "config": r["config"], "speedup": r["speedup"], "target": target, "ok": ok})
            print(f"{op} fwd+bwd, {r['config']} {r['shape']}: {r['speedup']:.2f}x the reference "
                  f"[target >= {target}x on {TARGET_CONFIG}]: "
                  f"{'ok' if ok else 'info only' if ok is None else 'MISSED'}")
    load_after = os.getloadavg()
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores")
    payload = {"benchmark": "ops", "quick": args.quick, "configs": {c: CONFIGS[c] for c in configs},
               "repeats": repeats, "threads": threads, "torch_note": note,
               "torch_version": torch.__version__ if torch else None,
               "load_before": list(load_before), "load_after": list(load_after),
               "results": results, "targets": verdicts}
    print(f"wrote {write_json(args.json, payload)}")


if __name__ == "__main__":
    main()
