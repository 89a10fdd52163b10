"""Training step: tinygrad_lm (fast and reference kernels) against PyTorch CPU eager, same model.

    python -m benchmarks.bench_train [--config tiny|small|both] [--quick] [--no-torch] [--no-memory]
                                     [--every-candidate] [--json PATH]

One step = forward + cross-entropy + backward + clip_grad_norm(1.0) + AdamW step + zero_grad,
of the GPT-2 architecture (learned positions, LayerNorm, exact GELU, tied weights) on the two
configs of the issue:

    tiny:  n_layer 4, n_head 4, n_embd 128, block 64,  batch 12   (nanoGPT's shakespeare-char CPU config)
    small: n_layer 6, n_head 6, n_embd 384, block 256, batch 64   (nanoGPT's shakespeare-char GPU config)

Every candidate starts from the same weights (a tinygrad_lm GPT copied into the PyTorch peer,
benchmarks/torch_gpt.py, by state_dict name) and steps on the same batch. The warm-up steps
are the self-check, printed before timing: the first loss of every candidate (the shared
initial weights) must agree to ~1e-5, and on tiny the second (after one update) is printed
too. After timing, every candidate has made the same number of steps, so their last losses
agree as well (printed under the table).

Candidates (alternated A B C ..., reversed every other repeat; tiny: 2 warm-up steps and 21
repeats, small: 1 and 3; --quick: 5 and 1):

    tinygrad fast BLAS 1 / 2       fast Numba kernels, OpenBLAS with 1 or 2 threads
    tinygrad reference BLAS 1 / 2  the readable reference ops (small: BLAS 1 only)
    torch default / 1 thread       torch.set_num_threads(default, 2 here) or 1 (small: default
                                   only); torch.optim.AdamW, torch.nn.utils.clip_grad_norm_
    --every-candidate runs the whole grid on small too (each extra candidate costs ~10-20 s a step).

Each candidate's thread settings are applied right before each of its samples (OpenBLAS's
thread count at run time, Numba's threads, torch's threads: Numba and torch may share one
OpenMP runtime). OMP_WAIT_POLICY defaults to passive and OpenBLAS's idle threads sleep
(benchmarks/__init__.py, set before anything loads).

Reported: median ms/step, tokens/s, the ratio tinygrad / torch (default threads; median of
paired ratios, < 1 means tinygrad_lm is faster), and model FLOPs utilisation: achieved FLOP/s
(``model.flops_per_token() * tokens / time``, the nanoGPT/PaLM estimate at full context)
divided by the float32 matmul peak measured in the same run (np.matmul and torch.matmul of
2048 x 2048, each at 1 and 2 threads). Two MFU columns: against the best peak measured on
this machine, and against its own library's peak at its own thread setting.

Memory: small-config steps (2; --quick: 1) of each framework (tinygrad_lm fast, reference,
torch) in its own subprocess, in bytes over the baseline taken after imports and one
tiny-config step (so the libraries' code, JIT kernels and thread pools are in): the peak resident set
(VmHWM of /proc/self/status, reset to the current RSS at the baseline through clear_refs), the
ru_maxrss difference (resource.getrusage; Linux carries ru_maxrss over from the parent through
fork+exec, so it reads +0 when the benchmark process was bigger, and is then flagged), and the
resident set kept after the steps (glibc keeps freed memory: see tinygrad_lm.backend). The
floor is parameters + gradients + two AdamW moments.

--quick: fewer repeats, for a smoke run (numbers are noise on a loaded machine).
"""
from __future__ import annotations

import os

import argparse
import gc
import json
import resource
import subprocess
import sys
import time

import numpy as np

import tinygrad_lm as tg
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.optim import clip_grad_norm

from .common import blas_threads, format_table, interleaved, paired_ratio, set_blas_threads, write_json


def torch_or_none():
    """(torch, None) or (None, why not); imports torch_gpt (and torch) only when asked, so the
    tinygrad_lm memory subprocess never loads torch."""
    from .torch_gpt import torch_or_none as probe
    return probe()

CONFIGS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=64),
}
VOCAB = 65
OPT = dict(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99))   # nanoGPT's shakespeare-char settings
CLIP = 1.0
# (repeats, warm-up steps) per config: small-config steps take seconds (PyTorch ~7 s on these machines)
# Timed repeats per candidate, after the warm-up steps (which are the self-check). A small-config
# step takes seconds to tens of seconds (PyTorch ~7 s on a quiet machine), so few repeats there.
REPEATS = {"tiny": 21, "small": 3}
QUICK_REPEATS = {"tiny": 5, "small": 1}
WARMUP = {"tiny": 2, "small": 1}
MEMORY_STEPS = 2   # the second step has the AdamW moments allocated (the steady state); --quick: 1
PEAK_N = 2048


def peak_label(lib: str, n: int) -> str:
    return f"{lib} {n} thread{'s' if n > 1 else ''}"


def gpt_config(cfg) -> GPTConfig:
    return GPTConfig(vocab_size=VOCAB, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_embd=cfg["n_embd"],
                     block_size=cfg["block_size"], dropout=0.0, bias=True)


def batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    shape = (cfg["batch"], cfg["block_size"])
    return rng.integers(0, VOCAB, shape).astype(np.int64), rng.integers(0, VOCAB, shape).astype(np.int64)


# ---- thread settings ---------------------------------------------------------------------------

class Threads:
    """Applies one candidate's thread settings (cheap: called before every sample)."""

    def __init__(self, torch, blas=None, torch_threads=None):
        import numba
        self.numba, self.numba_threads = numba, numba.config.NUMBA_NUM_THREADS
        self.torch, self.blas, self.torch_threads = torch, blas, torch_threads

    def apply(self):
        if self.blas is not None:
            set_blas_threads(self.blas)
        self.numba.set_num_threads(self.numba_threads)
        if self.torch is not None and self.torch_threads is not None:
            self.torch.set_num_threads(self.torch_threads)

    def describe(self) -> dict:
        d = {"numba_threads": self.numba_threads}
        if self.blas is not None:
            d["openblas_threads"] = self.blas
        if self.torch_threads is not None:
            d["torch_threads"] = self.torch_threads
        return d


# ---- the two frameworks' steps -------------------------------------------------------------------

def tinygrad_runner(cfg, mode: str):
    """(step() -> loss, model) for a fresh tinygrad_lm GPT (seeded: same weights every time)."""
    tg.manual_seed(0)
    model = GPT(gpt_config(cfg)).train()
    opt = model.configure_optimizers(**OPT)
    x, y = batch(cfg)

    def step():
        with tg.use_kernels(mode):
            _, loss = model(x, y)
            loss.backward()
            clip_grad_norm(model.parameters(), CLIP)
            opt.step()
            opt.zero_grad()
        return float(loss.data)
    return step, model


def torch_runner(cfg, torch):
    from .torch_gpt import from_tinygrad
    tg.manual_seed(0)
    peer = from_tinygrad(GPT(gpt_config(cfg))).train()
    opt = peer.configure_optimizers(**OPT)
    x, y = (torch.from_numpy(a) for a in batch(cfg))

    def step():
        _, loss = peer(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(peer.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step, peer


# ---- matmul peak -------------------------------------------------------------------------------

def matmul_peaks(torch, repeats) -> dict:
    """GFLOP/s of a float32 (2048, 2048) @ (2048, 2048) for NumPy and torch at 1 and 2 threads."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((PEAK_N, PEAK_N)).astype(np.float32) for _ in range(2))
    cases = {}
    for n in (1, 2):
        th = Threads(torch, blas=n)
        cases[peak_label("numpy", n)] = lambda th=th: (th.apply(), np.matmul(a, b))
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            tth = Threads(torch, torch_threads=n)
            cases[peak_label("torch", n)] = lambda th=tth: (th.apply(), torch.matmul(ta, tb))
    stats = interleaved(cases, repeats=repeats, warmup=1, number=1)
    flops = 2 * PEAK_N ** 3
    return {k: {"gflops": flops / s.median, "stats": s} for k, s in stats.items()}


# ---- timing ------------------------------------------------------------------------------------

TORCH_DEFAULT_THREADS = None   # torch.get_num_threads() at start-up (main sets it before anything changes it)


def candidates(name, cfg, torch, every: bool):
    """name -> (Threads, step, framework, thread count) of every candidate for one config.

    The small config leaves out reference kernels with 2 BLAS threads and torch with 1 thread
    (each costs ~10-20 s a step) unless `every`."""
    torch_default = TORCH_DEFAULT_THREADS
    full_grid = every or name == "tiny"
    out = {}
    for mode, blas_list in (("fast", (1, 2)), ("reference", (1, 2) if full_grid else (1,))):
        for n in blas_list:
            step, _ = tinygrad_runner(cfg, mode)
            out[f"tinygrad {mode} BLAS {n}"] = (Threads(torch, blas=n), step, "numpy", n)
    if torch is not None:
        for n in sorted({torch_default, 1} if full_grid else {torch_default}, reverse=True):
            step, _ = torch_runner(cfg, torch)
            label = peak_label("torch", n) + (" (default)" if n == torch_default else "")
            out[label] = (Threads(torch, torch_threads=n), step, "torch", n)
    return out


def time_config(name, cfg, torch, quick, peaks, every=False):
    repeats, warmup = (QUICK_REPEATS if quick else REPEATS)[name], WARMUP[name]
    cands = candidates(name, cfg, torch, every)
    losses = {k: [] for k in cands}

    def make(label, th, step):
        def run():
            th.apply()
            losses[label].append(step())
        return run
    runs = {k: make(k, th, step) for k, (th, step, _, _) in cands.items()}
    # Warm-up = the self-check: the first loss of every candidate is at the shared initial
    # weights (must agree to ~1e-5); a second warm-up step shows the loss after one update.
    warm_s = {k: [] for k in runs}
    for _ in range(warmup):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run()
            warm_s[k].append(time.perf_counter() - t0)
    check = {k: v[:warmup] for k, v in losses.items()}
    ref = next(iter(check.values()))
    for k, ls in check.items():
        ok = abs(ls[0] - ref[0]) <= 1e-5 * max(1.0, abs(ref[0]))
        after = f", after one step {ls[1]:.6f} (|diff| {abs(ls[1] - ref[1]):.1e})" if warmup > 1 else ""
        print(f"  self-check {name} {k:32s} loss {ls[0]:.6f} (|diff| {abs(ls[0] - ref[0]):.1e}) "
              f"[{'ok' if ok else 'MISMATCH'}]{after}; warm-up step {1e3 * warm_s[k][-1]:.0f} ms", flush=True)
    stats = interleaved(runs, repeats=repeats, warmup=0, number=1)
    model = GPT(gpt_config(cfg))
    tokens = cfg["batch"] * cfg["block_size"]
    flops_per_step = model.flops_per_token() * tokens
    best_peak = max(p["gflops"] for p in peaks.values()) * 1e9
    torch_ref = next((k for k in cands if k.startswith("torch") and "default" in k), None)
    rows = []
    for label, (th, _, lib, n) in cands.items():
        s = stats[label]
        secs = s.median / 1e9
        own = peaks.get(peak_label(lib, n), {}).get("gflops")
        rows.append({
            "config": name, "candidate": label, "threads": th.describe(), "stats": s,
            "ms_per_step": secs * 1e3, "tokens_per_s": tokens / secs,
            "vs_torch": paired_ratio(s, stats[torch_ref]) if torch_ref else None,
            "achieved_gflops": flops_per_step / secs / 1e9,
            "mfu_vs_best_peak": flops_per_step / secs / best_peak,
            "mfu_vs_own_peak": flops_per_step / secs / (own * 1e9) if own else None,
            "first_losses": check[label], "last_loss": losses[label][-1], "steps": len(losses[label]),
            "warmup_seconds": warm_s[label],
        })
    info = {"repeats": repeats, "warmup_steps": warmup, "tokens_per_step": tokens,
            "flops_per_token": model.flops_per_token(), "flops_per_step": flops_per_step,
            "num_params": model.num_params(), "torch_reference": torch_ref}
    return rows, info


# ---- memory (each framework in its own process) ------------------------------------------------

def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: echo 5 > clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(framework: str, config: str, steps: int):
    """Run in a subprocess: imports and one tiny-config step (libraries load code, JIT kernels,
    thread pools), baseline, `steps` training steps of `config`, print a JSON line.

    Two measurements, in bytes over the baseline taken after imports:
    - peak_rss: VmHWM (the peak resident set) after the steps, reset to the current RSS at the
      baseline, minus the baseline RSS;
    - peak_ru_maxrss: resource.getrusage ru_maxrss after the steps minus ru_maxrss at the
      baseline. Linux carries ru_maxrss over from the parent across fork+exec, so when the
      parent was bigger this reads 0 (flagged by ru_maxrss_inherited).
    rss_after: the resident set after the steps minus the baseline (what the process keeps)."""
    torch = None
    if framework == "torch":
        torch, note = torch_or_none()
        if torch is None:
            print(json.dumps({"error": note}))
            return
    else:
        from tinygrad_lm import backend
        backend.fast_table("cpu")  # Numba and the kernels: imports, not the step
    make_runner = (lambda c: torch_runner(c, torch)[0]) if torch is not None else \
        (lambda c: tinygrad_runner(c, framework.split()[-1])[0])
    make_runner(CONFIGS["tiny"])()   # one tiny step first: libraries load their code and kernels
    gc.collect()
    base_ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
    reset = _reset_peak()
    base_rss = _status_kib("VmRSS") * 1024
    step = make_runner(CONFIGS[config])
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_rss": _status_kib("VmHWM") * 1024 - base_rss if reset else None,
                      "peak_ru_maxrss": ru - base_ru, "ru_maxrss_inherited": base_ru > base_rss and ru == base_ru,
                      "rss_after": _status_kib("VmRSS") * 1024 - base_rss, "baseline_rss": base_rss,
                      "steps": steps, "seconds": secs}))


def _mib(b):
    return "-" if b is None else f"{b / 2**20:.0f} MiB"


def measure_memory(config, torch_available, steps) -> dict:
    frameworks = ["tinygrad fast", "tinygrad reference"] + (["torch"] if torch_available else [])
    out = {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for fw in frameworks:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
        if fw == "torch":  # torch's own allocator behaviour: no tinygrad_lm malloc tuning (it builds the weights)
            env["TINYGRAD_LM_NO_MALLOPT"] = "1"
        cmd = [sys.executable, "-m", "benchmarks.bench_train", "--memory-worker", fw, "--config", config,
               "--steps", str(steps)]
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
        lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
        r = out[fw] = json.loads(lines[-1]) if res.returncode == 0 and lines else {"error": res.stderr[-2000:]}
        if "error" in r:
            print(f"  {fw}: failed: {r['error'][-300:]}")
            continue
        ru = "n/a (carried over from the parent)" if r["ru_maxrss_inherited"] else "+" + _mib(r["peak_ru_maxrss"])
        print(f"  {fw:20s} peak RSS +{_mib(r['peak_rss'])} (VmHWM), ru_maxrss {ru}, "
              f"RSS kept after the steps +{_mib(r['rss_after'])} ({steps} step(s), {r['seconds']:.1f} s)", flush=True)
    return out


# ---- main ---------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", choices=["tiny", "small", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="few repeats (a smoke run; noisy numbers)")
    ap.add_argument("--no-torch", action="store_true", help="leave out the PyTorch candidates")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--every-candidate", action="store_true",
                    help="small config too: reference kernels with 2 BLAS threads and torch with 1 thread (slow)")
    ap.add_argument("--json", default="benchmarks/results/train.json")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        return memory_worker(args.memory_worker, args.config, args.steps)
    torch, note = (None, "PyTorch candidates left out (--no-torch)") if args.no_torch else torch_or_none()
    global TORCH_DEFAULT_THREADS
    TORCH_DEFAULT_THREADS = torch.get_num_threads() if torch is not None else None
    if note:
        print(f"note: {note}")
    from tinygrad_lm import backend
    backend.fast_table("cpu")  # load the kernels (and their thread policy) before timing
    import numba
    threads = {"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
               "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
               "openblas_threads_at_start": blas_threads(), "numba_threads": numba.config.NUMBA_NUM_THREADS,
               "torch_default_threads": torch.get_num_threads() if torch else None,
               "torch_interop_threads": torch.get_num_interop_threads() if torch else None}
    print(f"threads: {threads}")
    if blas_threads() is None:
        print("note: OpenBLAS's thread setter was not found: the BLAS 1/2 candidates run with NumPy's own setting")
    configs = list(CONFIGS) if args.config == "both" else [args.config]
    load_before = os.getloadavg()
    payload = {"benchmark": "train", "quick": args.quick, "configs": {c: CONFIGS[c] for c in configs},
               "optimizer": OPT, "clip": CLIP, "threads": threads, "torch_note": note,
               "torch_version": torch.__version__ if torch else None, "load_before": list(load_before)}

    print(f"\nfloat32 matmul peak ({PEAK_N} x {PEAK_N}), interleaved:")
    peaks = matmul_peaks(torch, repeats=3 if args.quick else 7)
    for k, v in peaks.items():
        print(f"  {k}: {v['gflops']:.0f} GFLOP/s")
    payload["matmul_peaks"] = peaks

    rows, infos = [], {}
    for name in configs:
        cfg = CONFIGS[name]
        reps = (QUICK_REPEATS if args.quick else REPEATS)[name]
        print(f"\n{name}: {WARMUP[name]} warm-up step(s) per candidate (same weights, same batch: the losses "
              f"must agree{'' if torch is not None else '; without PyTorch only tinygrad_lm variants are compared'}"
              f"), then {reps} interleaved repeat(s) ...", flush=True)
        r, info = time_config(name, cfg, torch, args.quick, peaks, args.every_candidate)
        rows += r
        infos[name] = info
    payload["timing"] = rows
    payload["config_info"] = infos

    headers = ["config", "candidate", "ms/step", "tokens/s", "GFLOP/s", "MFU (best peak)", "MFU (own peak)"]
    if torch is not None:
        headers.append("time / torch")
    table = []
    for r in rows:
        row = [r["config"], r["candidate"], r["ms_per_step"], r["tokens_per_s"], r["achieved_gflops"],
               f"{100 * r['mfu_vs_best_peak']:.1f}%",
               f"{100 * r['mfu_vs_own_peak']:.1f}%" if r["mfu_vs_own_peak"] else "-"]
        if torch is not None:
            row.append(r["vs_torch"])
        table.append(row)
    print("\nTraining step (forward, backward, clip_grad_norm, AdamW), median over repeats"
          + ("; time / torch = median of paired ratios against torch at its default threads (< 1: tinygrad_lm faster)"
             if torch is not None else "; tinygrad_lm only (PyTorch is not installed)"))
    print(format_table(headers, table))
    for name in configs:
        losses = {r["candidate"]: r["last_loss"] for r in rows if r["config"] == name}
        spread = max(losses.values()) - min(losses.values())
        steps = {r["steps"] for r in rows if r["config"] == name}
        print(f"{name}: losses after {'/'.join(map(str, steps))} steps on the same batch agree within {spread:.1e} "
              f"({', '.join(f'{k} {v:.4f}' for k, v in losses.items())})")

    if not args.no_memory:
        steps = 1 if args.quick else MEMORY_STEPS
        print(f"\nMemory of small-config training steps, each framework in its own process ({steps} step(s)), "
              f"over the baseline after imports:")
        payload["memory_small"] = measure_memory("small", torch is not None, steps)
        n = GPT(gpt_config(CONFIGS["small"])).num_parameters()
        floor = 4 * n * 4
        payload["memory_floor_bytes"] = floor
        print(f"  floor: parameters + grads + AdamW m, v = 4 x {n:,} float32 = {floor / 2**20:.0f} MiB")

    load_after = os.getloadavg()
    payload["load_after"] = list(load_after)
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} cores")
    print(f"wrote {write_json(args.json, payload)}")


if __name__ == "__main__":
    main()
