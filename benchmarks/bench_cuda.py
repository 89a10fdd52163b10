"""GPU: the Numba CUDA kernels against the CuPy reference ops and PyTorch, and a training step.

    python -m benchmarks.bench_cuda [--quick] [--only SECTION ...] [--no-torch] [--steps N] [--json PATH]

Needs an NVIDIA GPU, CuPy and numba-cuda (pip install 'tinygrad_lm[cuda]'); without a GPU it
says so and exits with status 1. Sections (--only picks some):

  peak     measured device peaks: copy bandwidth (cupy.copyto of 512 MiB) and float32 matmul
           FLOP/s (cuBLAS SGEMM at 8192^3 through CuPy, no TF32), the yardsticks of "% peak"
  check    every fast kernel against its reference pair on the GPU (the simulator in CI checks
           the logic; this checks the compiled kernels on the hardware): max error per output
  ops      each hot op on the small config's shapes (B 64, nh 6, T 256, C 384, hs 64, V 65;
           cross-entropy also at GPT-2's V 50304), forward and backward timed separately:
           reference = backend.reference(op) on CuPy arrays, fast = kernels/cuda/ops.FAST,
           torch = the PyTorch op (its backward through torch.autograd.grad), plus the tiled
           matmul against cuBLAS (CuPy's @) and torch.matmul. Achieved GB/s (minimum bytes an
           op must move) or TFLOP/s (attention, matmul), and that as % of the measured peak.
  train    one training step (forward, loss, backward, AdamW, zero_grad) of the small GPT
           (n_layer 6, n_head 6, n_embd 384, block 256, batch 64, V 65): tinygrad_lm on CuPy with
           fast kernels and with reference kernels, against PyTorch eager float32 (TF32 off)
           loaded with the same weights; ms/step, tokens/s, MFU against the measured peak.

Timing: every candidate runs in bursts of back-to-back calls ended by one device synchronize
(so launch overhead counts, as it does in training, but one sync is spread over the burst);
candidates are interleaved and the median of the repeats is reported (benchmarks/common.py).
"""
from __future__ import annotations

import tinygrad_lm  # noqa: F401  (first, as users do: its thread settings precede NumPy; this package no longer loads it)

import argparse
import math
import sys
import time

import numpy as np

from tinygrad_lm import backend, optim  # noqa: F401  (optim registers the adamw reference)

from .common import Stats, format_table, interleaved, write_json

SMALL = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=64, vocab=65)
GPT2_VOCAB = 50304
SECTIONS = ("peak", "check", "ops", "train")
_MiB = 1 << 20


# ---- GPU timing -------------------------------------------------------------------------------

def time_gpu(cands: dict, sync, repeats: int, burst_ms: float = 2.0) -> dict[str, Stats]:
    """name -> callable: per-call Stats (ns) from interleaved bursts of calls, each ended by sync()."""
    bursts, calls = {}, {}
    for name, fn in cands.items():
        for _ in range(2):                      # warm up (compilation, allocator, cuBLAS handles)
            fn()
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        one = max(time.perf_counter() - t0, 1e-6)
        k = max(1, min(1000, math.ceil(burst_ms / 1e3 / one)))
        calls[name] = k

        def burst(fn=fn, k=k):
            for _ in range(k):
                fn()
            sync()
        bursts[name] = burst
    stats = interleaved(bursts, repeats=repeats, warmup=1, number=1)
    return {n: Stats([s / calls[n] for s in st.samples], calls[n]) for n, st in stats.items()}


def ms(stats: Stats | None) -> float | None:
    return None if stats is None else stats.median / 1e6


# ---- the device -------------------------------------------------------------------------------

def device_info(cp) -> dict:
    rt = cp.cuda.runtime
    dev = cp.cuda.Device()
    props = rt.getDeviceProperties(dev.id)
    name = props.get("name", b"")
    info = {"name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{props.get('major')}.{props.get('minor')}",
            "sm_count": props.get("multiProcessorCount"),
            "memory_gib": round(props.get("totalGlobalMem", 0) / (1 << 30), 1),
            "driver": rt.driverGetVersion(), "runtime": rt.runtimeGetVersion(), "cupy": cp.__version__}
    clock, bus = props.get("memoryClockRate"), props.get("memoryBusWidth")  # (absent from newer CUDA props)
    if clock and bus:
        info["datasheet_bandwidth_gbs"] = round(2 * clock * 1e3 * bus / 8 / 1e9, 1)
    try:
        import numba_cuda
        info["numba_cuda"] = numba_cuda.__version__
    except Exception:
        pass
    return info


def measure_peaks(cp, sync, repeats: int) -> dict:
    """Copy bandwidth (GB/s, read + write) and float32 SGEMM FLOP/s, as this device delivers them."""
    n = 512 * _MiB // 4
    a = cp.ones(n, dtype=cp.float32)
    b = cp.empty_like(a)
    st = time_gpu({"copy": lambda: cp.copyto(b, a)}, sync, repeats)["copy"]
    bandwidth = 2 * a.nbytes / (st.median / 1e9) / 1e9
    del a, b
    m = 8192
    x = cp.random.standard_normal((m, m), dtype=cp.float32)
    y = cp.random.standard_normal((m, m), dtype=cp.float32)
    st = time_gpu({"sgemm": lambda: x @ y}, sync, max(3, repeats // 3))["sgemm"]
    flops = 2 * m ** 3 / (st.median / 1e9)
    del x, y
    cp.get_default_memory_pool().free_all_blocks()
    return {"copy_bandwidth_gbs": bandwidth, "sgemm_tflops": flops / 1e12, "sgemm_n": m, "copy_mib": 512}


# ---- the ops and their inputs -------------------------------------------------------------------

class OpCase:
    """One op on one shape: the argument tuples of its forward and backward (built once), and the
    work it does (bytes it must move at least, or FLOPs), for achieved-rate columns."""

    def __init__(self, op, shape, fwd_args, bwd_args=None, fwd_bytes=0, bwd_bytes=0, fwd_flops=0, bwd_flops=0,
                 torch_fwd=None, torch_bwd=None):
        self.op, self.shape, self.fwd_args, self.bwd_args = op, shape, fwd_args, bwd_args
        self.work = {"fwd": (fwd_bytes, fwd_flops), "bwd": (bwd_bytes, bwd_flops)}
        self.torch = {"fwd": torch_fwd, "bwd": torch_bwd}


def build_cases(xp, cfg: dict, torch=None, vocab_big: int = GPT2_VOCAB) -> list[OpCase]:
    """The hot ops on the config's shapes, inputs made with ``xp`` (CuPy here; NumPy in the test
    that checks this plumbing without a GPU). Backward arguments come from the reference forward."""
    B, T, C, nh, V = cfg["batch"], cfg["block_size"], cfg["n_embd"], cfg["n_head"], cfg["vocab"]
    hs, N = C // nh, B * T
    rng = np.random.default_rng(0)
    f32 = np.float32

    def rand(*shape, scale=1.0):
        return xp.asarray((rng.standard_normal(shape) * scale).astype(f32))

    ref = backend.reference
    tt = _TorchView(torch) if torch is not None else None
    cases = []

    x = rand(B, nh, T, T, scale=2.0)                             # attention scores' rows
    y = ref("softmax").forward(x)
    g = rand(*x.shape)
    n = x.size * 4
    cases.append(OpCase("softmax", f"({B},{nh},{T},{T})", (x,), (y, g), 2 * n, 3 * n,
                        torch_fwd=tt and tt.softmax(x), torch_bwd=tt and tt.softmax_bwd(x, g)))

    for vocab, rows in ((V, N), (vocab_big, N // 4)):
        z = rand(rows, vocab, scale=2.0)
        t = xp.asarray(rng.integers(0, vocab, rows))
        losses, lse = ref("cross_entropy").forward(z, t, -1)
        scale = xp.full(rows, 1.0 / rows, dtype=f32)
        n = z.size * 4
        cases.append(OpCase("cross_entropy", f"({rows},{vocab})", (z, t, -1), (z, lse, t, -1, scale), n, 2 * n,
                            torch_fwd=tt and tt.cross_entropy(z, t),
                            torch_bwd=tt and tt.cross_entropy_bwd(z, t, scale)))

    x, w, b, g = rand(N, C), rand(C), rand(C), rand(N, C)
    _, mean, rstd = ref("layer_norm").forward(x, w, b, 1e-5)
    n = x.size * 4
    cases.append(OpCase("layer_norm", f"({N},{C})", (x, w, b, 1e-5), (g, x, mean, rstd, w), 2 * n, 3 * n,
                        torch_fwd=tt and tt.layer_norm(x, w, b), torch_bwd=tt and tt.layer_norm_bwd(x, w, b, g)))
    _, rstd = ref("rms_norm").forward(x, w, 1e-5)
    cases.append(OpCase("rms_norm", f"({N},{C})", (x, w, 1e-5), (g, x, rstd, w), 2 * n, 3 * n,
                        torch_fwd=tt and tt.rms_norm(x, w), torch_bwd=tt and tt.rms_norm_bwd(x, w, g)))

    x, g = rand(N, 4 * C), rand(N, 4 * C)
    n = x.size * 4
    cases.append(OpCase("gelu", f"({N},{4 * C})", (x, "none"), (x, g, "none"), 2 * n, 3 * n,
                        torch_fwd=tt and tt.gelu(x), torch_bwd=tt and tt.gelu_bwd(x, g)))
    cases.append(OpCase("silu", f"({N},{4 * C})", (x,), (x, g), 2 * n, 3 * n,
                        torch_fwd=tt and tt.silu(x), torch_bwd=tt and tt.silu_bwd(x, g)))

    q, k, v, dout = (rand(B, nh, T, hs) for _ in range(4))
    out, lse = ref("attention").forward(q, k, v, 1 / math.sqrt(hs), True)
    flops = 4 * B * nh * T * T * hs / 2                          # QK^T and PV, causal half
    cases.append(OpCase("attention", f"({B},{nh},{T},{hs}) causal", (q, k, v, 1 / math.sqrt(hs), True),
                        (q, k, v, out, lse, dout, 1 / math.sqrt(hs), True), fwd_flops=flops, bwd_flops=2.5 * flops,
                        torch_fwd=tt and tt.sdpa(q, k, v), torch_bwd=tt and tt.sdpa_bwd(q, k, v, dout)))

    ids = xp.asarray(rng.integers(0, V, (B, T)))
    g = rand(B, T, C)
    cases.append(OpCase("embedding", f"ids ({B},{T}) -> ({V},{C})", None, (ids, g, V),
                        bwd_bytes=(N * C + 2 * V * C) * 4 + ids.size * 8, torch_bwd=tt and tt.embedding_bwd(ids, g, V)))

    from tinygrad_lm.models import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=cfg["n_layer"], n_head=nh, n_embd=C))
    shapes = [p.shape for p in model.parameters()]
    params = [[rand(*s, scale=0.02), rand(*s, scale=1e-3), xp.zeros(s, f32), xp.zeros(s, f32)] for s in shapes]
    count = sum(math.prod(s) for s in shapes)
    cases.append(OpCase("adamw", f"{len(shapes)} tensors, {count / 1e6:.1f}M values", (params,), None,
                        fwd_bytes=7 * 4 * count, torch_fwd=tt and tt.adamw(params)))

    for m_, k_, n_ in ((N, C, 4 * C), (2048, 2048, 2048)):
        a, bb = rand(m_, k_), rand(k_, n_)
        cases.append(OpCase("matmul", f"({m_},{k_})@({k_},{n_})", (a, bb), None, fwd_flops=2 * m_ * k_ * n_,
                            torch_fwd=tt and tt.matmul(a, bb)))
    return cases


def run_fwd(impl, case):
    """The forward candidate of a case for an Impl (adamw: one update of every tensor, as AdamW.step)."""
    if case.op == "adamw":
        (params,) = case.fwd_args
        return lambda: [impl.forward(p, g, m, v, 1, 1e-3, 0.9, 0.95, 1e-8, 0.1) for p, g, m, v in params]
    if case.op == "matmul":
        return (lambda: case.fwd_args[0] @ case.fwd_args[1]) if impl is None else (lambda: impl(*case.fwd_args))
    return lambda: impl.forward(*case.fwd_args)


class _TorchView:
    """PyTorch's version of each op on the same device memory (zero-copy through DLPack)."""

    def __init__(self, torch):
        self.torch = torch
        self.F = torch.nn.functional

    def t(self, a, grad=False):
        out = self.torch.from_dlpack(a)
        return out.detach().clone().requires_grad_(True) if grad else out

    def _bwd(self, out, inputs, g):
        return lambda: self.torch.autograd.grad(out, inputs, g, retain_graph=True)

    def softmax(self, x):
        xt = self.t(x)
        return lambda: self.torch.softmax(xt, -1)

    def softmax_bwd(self, x, g):
        xt = self.t(x, True)
        return self._bwd(self.torch.softmax(xt, -1), (xt,), self.t(g))

    def cross_entropy(self, z, t):
        zt, tt = self.t(z), self.t(t)
        return lambda: self.F.cross_entropy(zt, tt, reduction="none", ignore_index=-1)

    def cross_entropy_bwd(self, z, t, scale):
        zt = self.t(z, True)
        return self._bwd(self.F.cross_entropy(zt, self.t(t), reduction="none", ignore_index=-1), (zt,), self.t(scale))

    def layer_norm(self, x, w, b):
        xt, wt, bt = self.t(x), self.t(w), self.t(b)
        return lambda: self.F.layer_norm(xt, wt.shape, wt, bt, 1e-5)

    def layer_norm_bwd(self, x, w, b, g):
        xt, wt, bt = self.t(x, True), self.t(w, True), self.t(b, True)
        return self._bwd(self.F.layer_norm(xt, wt.shape, wt, bt, 1e-5), (xt, wt, bt), self.t(g))

    def rms_norm(self, x, w):
        if not hasattr(self.F, "rms_norm"):
            return None
        xt, wt = self.t(x), self.t(w)
        return lambda: self.F.rms_norm(xt, wt.shape, wt, 1e-5)

    def rms_norm_bwd(self, x, w, g):
        if not hasattr(self.F, "rms_norm"):
            return None
        xt, wt = self.t(x, True), self.t(w, True)
        return self._bwd(self.F.rms_norm(xt, wt.shape, wt, 1e-5), (xt, wt), self.t(g))

    def gelu(self, x):
        xt = self.t(x)
        return lambda: self.F.gelu(xt)

    def gelu_bwd(self, x, g):
        xt = self.t(x, True)
        return self._bwd(self.F.gelu(xt), (xt,), self.t(g))

    def silu(self, x):
        xt = self.t(x)
        return lambda: self.F.silu(xt)

    def silu_bwd(self, x, g):
        xt = self.t(x, True)
        return self._bwd(self.F.silu(xt), (xt,), self.t(g))

    def sdpa(self, q, k, v):
        qt, kt, vt = self.t(q), self.t(k), self.t(v)
        return lambda: self.F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)

    def sdpa_bwd(self, q, k, v, dout):
        qt, kt, vt = self.t(q, True), self.t(k, True), self.t(v, True)
        return self._bwd(self.F.scaled_dot_product_attention(qt, kt, vt, is_causal=True), (qt, kt, vt), self.t(dout))

    def embedding_bwd(self, ids, g, V):
        w = self.torch.zeros((V, g.shape[-1]), device="cuda", requires_grad=True)
        return self._bwd(self.F.embedding(self.t(ids), w), (w,), self.t(g))

    def adamw(self, params):
        ps = []
        for p, g, _, _ in params:
            pt = self.t(p).detach().clone().requires_grad_(True)
            pt.grad = self.t(g).clone()
            ps.append(pt)
        opt = self.torch.optim.AdamW(ps, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True)
        return opt.step

    def matmul(self, a, b):
        at, bt = self.t(a), self.t(b)
        return lambda: at @ bt


# ---- sections -----------------------------------------------------------------------------------

def check_kernels(cases, fast, cp) -> list[dict]:
    """Fast vs reference on the GPU, on the benchmark inputs: the largest error of each output,
    relative to the largest reference value (float32: expect ~1e-6; 1e-4 or more is a bug)."""
    rows = []
    for case in cases:
        if case.op == "matmul":
            from tinygrad_lm.kernels.cuda import ops as cuda_ops
            got, want = [cuda_ops.matmul(*case.fwd_args)], [case.fwd_args[0] @ case.fwd_args[1]]
            rows.append(_errors(case, "fwd", got, want, cp))
            continue
        if case.op == "adamw":
            params = case.fwd_args[0][:4]
            copies = [[a.copy() for a in p] for p in params]
            for (p, g, m, v), (p2, g2, m2, v2) in zip(params, copies):
                fast["adamw"].forward(p, g, m, v, 1, 1e-3, 0.9, 0.95, 1e-8, 0.1)
                backend.reference("adamw").forward(p2, g2, m2, v2, 1, 1e-3, 0.9, 0.95, 1e-8, 0.1)
            rows.append(_errors(case, "fwd", [a for p in params for a in (p[0], p[2], p[3])],
                                [a for p in copies for a in (p[0], p[2], p[3])], cp))
            continue
        ref = backend.reference(case.op)
        for kind, args in (("fwd", case.fwd_args), ("bwd", case.bwd_args)):
            if args is None:
                continue
            fn_fast, fn_ref = (fast[case.op].forward, ref.forward) if kind == "fwd" else (fast[case.op].backward,
                                                                                        ref.backward)
            got, want = fn_fast(*args), fn_ref(*args)
            got, want = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
            rows.append(_errors(case, kind, got, want, cp))
    return rows


def _errors(case, kind, got, want, cp) -> dict:
    worst = 0.0
    for a, b in zip(got, want):
        finite = cp.isfinite(b)
        if not bool((cp.isfinite(a) == finite).all()):
            worst = math.inf
            continue
        if bool(finite.any()):
            diff = float(cp.abs(cp.where(finite, a - b, 0)).max())
            worst = max(worst, diff / max(1.0, float(cp.abs(cp.where(finite, b, 0)).max())))
    return {"op": case.op, "shape": case.shape, "pass": kind, "max_rel_error": worst, "ok": worst < 1e-4}


def bench_ops(cases, fast, torch, sync, repeats, peaks) -> list[dict]:
    from tinygrad_lm.kernels.cuda import ops as cuda_ops
    rows = []
    for case in cases:
        for kind in ("fwd", "bwd"):
            args = case.fwd_args if kind == "fwd" else case.bwd_args
            if args is None:
                continue
            cands = {}
            if case.op == "matmul":
                cands["reference"] = run_fwd(None, case)             # cuBLAS through CuPy
                cands["fast"] = run_fwd(cuda_ops.matmul, case)
            elif kind == "fwd":
                cands["reference"] = run_fwd(backend.reference(case.op), case)
                cands["fast"] = run_fwd(fast[case.op], case)
            else:
                cands["reference"] = (lambda f=backend.reference(case.op).backward, a=args: f(*a))
                cands["fast"] = (lambda f=fast[case.op].backward, a=args: f(*a))
            if torch is not None and case.torch[kind] is not None:
                cands["torch"] = case.torch[kind]
            st = time_gpu(cands, sync, repeats)
            nbytes, flops = case.work[kind]
            t_fast = st["fast"].median / 1e9
            row = {"op": case.op, "shape": case.shape, "pass": kind,
                   "reference_ms": ms(st["reference"]), "fast_ms": ms(st["fast"]), "torch_ms": ms(st.get("torch")),
                   "speedup_vs_reference": st["reference"].median / st["fast"].median,
                   "torch_over_fast": st["torch"].median / st["fast"].median if "torch" in st else None}
            if flops:
                row["fast_tflops"] = flops / t_fast / 1e12
                row["pct_peak"] = 100 * row["fast_tflops"] / peaks["sgemm_tflops"] if peaks else None
            else:
                row["fast_gbs"] = nbytes / t_fast / 1e9
                row["pct_peak"] = 100 * row["fast_gbs"] / peaks["copy_bandwidth_gbs"] if peaks else None
            rows.append(row)
            print(f"  {case.op:14s} {kind} {case.shape:28s} ref {row['reference_ms']:.3f} ms  "
                  f"fast {row['fast_ms']:.3f} ms" + (f"  torch {row['torch_ms']:.3f} ms" if row["torch_ms"] else ""),
                  flush=True)
    return rows


def bench_train(cp, torch, sync, steps: int, peaks) -> dict:
    """ms per training step of the small GPT: tinygrad_lm fast / reference kernels, PyTorch eager."""
    import tinygrad_lm as tg
    from tinygrad_lm.models import GPT, GPTConfig
    c = SMALL
    cfg = GPTConfig(vocab_size=c["vocab"], block_size=c["block_size"], n_layer=c["n_layer"], n_head=c["n_head"],
                    n_embd=c["n_embd"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, c["vocab"], (c["batch"], c["block_size"]))
    y = rng.integers(0, c["vocab"], (c["batch"], c["block_size"]))
    tg.manual_seed(0)
    host_model = GPT(cfg)
    state = host_model.state_dict()

    def ours(mode):
        model = GPT(cfg)
        model.load_state_dict(state)
        model.to("cuda")
        opt = model.configure_optimizers(weight_decay=0.1, learning_rate=6e-4)

        def step():
            with tg.use_kernels(mode):
                _, loss = model(x, y)
                loss.backward()
                opt.step()
                opt.zero_grad()
            return loss
        first = float(step().numpy())
        return step, first

    cands, first_loss = {}, {}
    for mode in ("fast", "reference"):
        cands[f"tinygrad_lm {mode}"], first_loss[f"tinygrad_lm {mode}"] = ours(mode)
    if torch is not None:
        from .torch_gpt import from_tinygrad
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_default_device("cuda")  # torch_gpt makes its position ids with torch.arange (default device)
        peer = from_tinygrad(host_model).cuda()
        topt = peer.configure_optimizers(weight_decay=0.1, learning_rate=6e-4)
        xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

        def torch_step():
            _, loss = peer(xt, yt)
            loss.backward()
            topt.step()
            topt.zero_grad(set_to_none=True)
            return loss
        first_loss["torch eager"] = float(torch_step())
        cands["torch eager"] = torch_step
    try:
        st = time_gpu(cands, sync, repeats=steps, burst_ms=0.0)  # one step per sample
    finally:
        if torch is not None:
            torch.set_default_device("cpu")
    tokens = c["batch"] * c["block_size"]
    flops = host_model.flops_per_token() * tokens
    out = {"config": c, "first_step_loss": first_loss, "rows": []}
    for name, s in st.items():
        sec = s.median / 1e9
        out["rows"].append({"candidate": name, "ms_per_step": sec * 1e3, "tokens_per_s": tokens / sec,
                            "mfu_pct": 100 * flops / sec / (peaks["sgemm_tflops"] * 1e12) if peaks else None,
                            "vs_torch": (st["torch eager"].median / s.median) if "torch eager" in st else None})
    return out


# ---- main -------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run; noisy numbers)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch columns")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default 20, 5 with --quick)")
    ap.add_argument("--json", default="benchmarks/results/cuda.json")
    args = ap.parse_args(argv)
    sections = set(args.only or SECTIONS)

    try:
        cp = backend.cupy_module()
    except RuntimeError as e:
        print(f"bench_cuda: no GPU to benchmark. {e}", file=sys.stderr)
        return 1
    fast = backend.fast_table("cuda")
    if not fast:
        print("bench_cuda: the CUDA kernels (tinygrad_lm.kernels.cuda) did not load: is numba-cuda installed? "
              "(pip install 'tinygrad_lm[cuda]')", file=sys.stderr)
        return 1
    torch = None
    if not args.no_torch:
        from .torch_gpt import torch_or_none
        torch, note = torch_or_none()
        if torch is not None and not torch.cuda.is_available():
            torch, note = None, "the installed PyTorch has no CUDA support"
        if note:
            print(f"note: {note}; no PyTorch columns")
    repeats = 5 if args.quick else 21
    steps = args.steps or (5 if args.quick else 20)
    device = cp.cuda.Device()
    sync = device.synchronize
    payload = {"device": device_info(cp), "torch": getattr(torch, "__version__", None), "repeats": repeats}
    print(f"device: {payload['device']}")

    peaks = None
    if sections & {"peak", "ops", "train"}:
        peaks = payload["peaks"] = measure_peaks(cp, sync, repeats)
        print(f"measured peaks: copy {peaks['copy_bandwidth_gbs']:.0f} GB/s, SGEMM {peaks['sgemm_tflops']:.1f} TFLOP/s")
    cases = build_cases(cp, SMALL, torch) if sections & {"check", "ops"} else []
    if "check" in sections:
        payload["check"] = check_kernels(cases, fast, cp)
        print("\nfast kernels against the reference, on the GPU:")
        print(format_table(["op", "shape", "pass", "max rel error", "ok"],
                           [[r["op"], r["shape"], r["pass"], f"{r['max_rel_error']:.1e}", "yes" if r["ok"] else "NO"]
                            for r in payload["check"]]))
    if "ops" in sections:
        print("\nops (small config):")
        rows = payload["ops"] = bench_ops(cases, fast, torch, sync, repeats, peaks)
        print(format_table(
            ["op", "shape", "pass", "ref ms", "fast ms", "torch ms", "ref/fast", "torch/fast", "fast GB/s | TFLOP/s",
             "% peak"],
            [[r["op"], r["shape"], r["pass"], r["reference_ms"], r["fast_ms"], "-" if r["torch_ms"] is None else
              r["torch_ms"], r["speedup_vs_reference"], "-" if r["torch_over_fast"] is None else r["torch_over_fast"],
              f"{r['fast_tflops']:.2f} TFLOP/s" if "fast_tflops" in r else f"{r['fast_gbs']:.0f} GB/s",
              "-" if r["pct_peak"] is None else r["pct_peak"]] for r in rows]))
    del cases
    cp.get_default_memory_pool().free_all_blocks()
    if "train" in sections:
        print("\ntraining step (small config):")
        payload["train"] = train = bench_train(cp, torch, sync, steps, peaks)
        print(f"first-step losses (same weights and batch): {train['first_step_loss']}")
        print(format_table(["candidate", "ms/step", "tokens/s", "MFU %", "torch/this"],
                           [[r["candidate"], r["ms_per_step"], r["tokens_per_s"],
                             "-" if r["mfu_pct"] is None else r["mfu_pct"],
                             "-" if r["vs_torch"] is None else r["vs_torch"]] for r in train["rows"]]))
    path = write_json(args.json, payload)
    print(f"\nwrote {path}")
    bad = [r for r in payload.get("check", []) if not r["ok"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
