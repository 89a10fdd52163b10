"""IsoFLOP sweeps: for each compute budget C, models of several sizes, each trained on
D = C / (training FLOPs per token) tokens through the one training loop (Trainer).

Every run gets a cosine schedule matched to its own length (lr_decay_iters = max_iters): Hoffmann
et al. (2022, appendix A) found that a schedule longer than the run (the cosine not yet at its
end when training stops) biases the measured loss upwards, the error behind Kaplan et al.'s
exponents. Data is the built-in corpus (or --data) with a byte-level BPE trained on it.

    DIR/sweep.json    the sweep's settings; a later call with other settings refuses the folder
    DIR/runs.jsonl    one line per finished run (appended as each ends): what the fits read
    DIR/runs/NAME/    each run's own folder (checkpoint, log.jsonl, loss.png)

A killed sweep continues where it stopped: the same command skips every run already in
runs.jsonl and starts the interrupted one over (the Trainer only checkpoints at its evaluations,
at the start and the end, so there is nothing of it to resume)."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import backend
from ..models import GPT, GPTConfig
from ..tensor import manual_seed
from ..train import TrainConfig, Trainer
from .flops import flops_per_token, param_count

# (n_layer, n_embd) from 5k to 4M parameters (with a 512-token vocabulary), each ~1.3-2.5x the
# last; width over depth between 8 and 48, where Kaplan et al. (2020, fig. 5) saw the loss barely
# depend on the shape. Heads of 16 dimensions (one of 8 in the narrowest).
LADDER = ((1, 8), (1, 16), (1, 24), (1, 32), (1, 48), (2, 48), (2, 64), (3, 80), (3, 96), (4, 112), (4, 128),
          (5, 160), (6, 192), (7, 224))
HEAD_SIZE = 16
# where a budget's grid is centred: the shape nearest 40 tokens per parameter, about where the
# sweeps here found the minima (25-100, falling as C grows; Chinchilla's rule says 20); the grid
# spans several sizes either side, and `scaling fit` says when a minimum lies outside them
CENTRE_TOKENS_PER_PARAM = 40.0

# Sized on the project's 2-core machine (benchmarks/RESULTS.md): the default's 3.08e13 counted FLOPs
# took 703 s from a load of 1 (4.4e10 per second) and 1193 s beside two other training jobs; the
# quick one's 2.8e12, 71 s and 164 s. Time grows with points x the sum of the budgets.
DEFAULT_BUDGETS = (1e11, 3e11, 1e12, 3e12)
DEFAULT_POINTS = 7
QUICK_BUDGETS = (1e11, 2e11, 4e11)
QUICK_POINTS = 4

RUNS_FILE, SETTINGS_FILE = "runs.jsonl", "sweep.json"


@dataclass
class SweepConfig:
    """What a sweep trains. Everything but budgets, points and device must stay the same within
    one folder: runs made with other settings are not points of the same curves."""
    budgets: tuple = DEFAULT_BUDGETS       # training FLOPs per run, as flops.py counts them
    points: int = DEFAULT_POINTS           # model sizes per budget
    data: str | None = None                # None: the built-in corpus
    vocab_size: int = 512                  # BPE tokens: a small vocabulary keeps tiny models from being all embedding
    seq_len: int = 64
    batch_size: int = 16
    learning_rate: float = 4e-3            # at width 64; see lr_for
    max_learning_rate: float = 1e-2
    min_lr_ratio: float = 0.1              # the cosine ends at lr / 10, as in Chinchilla
    warmup_fraction: float = 0.05
    eval_iters: int = 16                   # batches of the final evaluation (the same ones for every run)
    min_iters: int = 50                    # shapes that would train for fewer steps are left out of a budget
    seed: int = 1337
    device: str = "cpu"
    ladder: tuple = field(default=LADDER)

    def __post_init__(self):
        self.budgets = tuple(float(b) for b in self.budgets)
        if not self.budgets:
            raise ValueError("budgets: give at least one compute budget")
        for b in self.budgets:
            if not (math.isfinite(b) and b > 0):
                raise ValueError(f"budgets must be positive numbers of FLOPs, got {b!r}")
        if len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets must differ from each other, got {list(self.budgets)}")
        for name in ("points", "seq_len", "batch_size", "eval_iters", "min_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("learning_rate", "max_learning_rate"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("min_lr_ratio", "warmup_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.points < 3:
            raise ValueError(f"points must be at least 3 (a parabola per budget), got {self.points}")
        self.ladder = tuple(tuple(s) for s in self.ladder)

    def settings(self) -> dict:
        """What must match between the runs of one folder."""
        d = asdict(self)
        for k in ("budgets", "points", "device"):
            del d[k]
        d["ladder"] = [list(s) for s in self.ladder]
        return d

    def lr_for(self, n_embd: int) -> float:
        """Peak learning rate of a width: learning_rate x 64 / n_embd, at most max_learning_rate.
        Narrow models want larger steps (muP's 1/width rule for Adam); one rate for all sizes would
        favour whichever size it suits. At 3e11 FLOPs, widths 16, 32 and 64 were best at >= 8e-3,
        8e-3 and 4e-3 of {1, 2, 4, 8}e-3."""
        return min(self.max_learning_rate, self.learning_rate * 64 / n_embd)

    def model_config(self, n_layer: int, n_embd: int) -> GPTConfig:
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.seq_len, n_layer=n_layer,
                         n_head=max(1, n_embd // HEAD_SIZE), n_embd=n_embd, dropout=0.0)


def plan(cfg: SweepConfig) -> list[dict]:
    """The runs of a sweep, budget by budget: {"name", "budget", "n_layer", "n_embd", "params",
    "flops_per_token", "iters", "tokens"}. Per budget, ``points`` consecutive ladder shapes around
    the one nearest 20 tokens per parameter, among those that get at least min_iters steps."""
    step_tokens = cfg.batch_size * cfg.seq_len
    shapes = []
    for n_layer, n_embd in cfg.ladder:
        fpt = flops_per_token(cfg.model_config(n_layer, n_embd))
        shapes.append({"n_layer": n_layer, "n_embd": n_embd, "params": fpt["params"], "flops_per_token": fpt["training"]})
    runs = []
    for budget in cfg.budgets:
        fits = []
        for s in shapes:
            iters = round(budget / s["flops_per_token"] / step_tokens)
            if iters >= cfg.min_iters:
                fits.append({**s, "iters": iters, "tokens": iters * step_tokens})
        if len(fits) < 3:
            # the budget at which the third cheapest shape gets min_iters steps
            need = cfg.min_iters * step_tokens * sorted(s["flops_per_token"] for s in shapes)[2]
            raise ValueError(f"budget {budget:.3g} FLOPs is too small for this grid: {len(fits)} model size(s) "
                             f"get {cfg.min_iters} steps of {step_tokens} tokens, a parabola needs 3; "
                             f"use budgets of at least {need:.2g}")
        centre = min(range(len(fits)), key=lambda i: abs(math.log(fits[i]["tokens"] / fits[i]["params"]
                                                                    / CENTRE_TOKENS_PER_PARAM)))
        lo = max(0, min(centre - cfg.points // 2, len(fits) - cfg.points))
        for s in fits[lo:lo + cfg.points]:
            runs.append({"name": f"C{budget:.3g}_L{s['n_layer']}_d{s['n_embd']}", "budget": budget, **s})
    return runs


def finished_runs(out) -> list[dict]:
    """The records of DIR/runs.jsonl (a last line cut short by a kill is ignored)."""
    path = Path(out) / RUNS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def _check_settings(out: Path, cfg: SweepConfig) -> None:
    path = out / SETTINGS_FILE
    if path.exists():
        held = json.loads(path.read_text())
        differ = sorted(k for k in set(held) | set(cfg.settings()) if held.get(k) != cfg.settings().get(k))
        if differ:
            shown = ", ".join(f"{k} {held.get(k)!r} there, {cfg.settings().get(k)!r} now" for k in differ)
            raise ValueError(f"{out} holds a sweep made with other settings ({shown}); use another --out "
                             f"or the same settings")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(cfg.settings(), indent=1) + "\n")


def run_sweep(out, cfg: SweepConfig, log=print) -> dict:
    """Train every planned run not yet in DIR/runs.jsonl. -> {"runs": every finished record of
    the folder, "trained": how many this call trained, "interrupted": Ctrl-C stopped it}."""
    from ..data import load_dataset
    out = Path(out)
    todo = plan(cfg)              # bad budgets fail here, before anything is written
    _check_settings(out, cfg)
    done = {r["name"] for r in finished_runs(out)}
    todo_now = [r for r in todo if r["name"] not in done]
    log(f"sweep: {len(cfg.budgets)} budget(s), {len(todo)} runs ({len(todo) - len(todo_now)} already done), "
        f"{sum(r['budget'] for r in todo_now):.3g} FLOPs to train")
    if not todo_now:
        return {"runs": finished_runs(out), "trained": 0, "interrupted": False}
    data, tok = load_dataset(cfg.data, tokenizer="bpe", bpe_vocab_size=cfg.vocab_size)
    # bits per byte = nats per token / ln 2 / (bytes per token); the validation text's own ratio
    val_bytes_per_token = len(tok.decode_bytes(data.val)) / len(data.val)
    log(f"data: {data.source}, {data.num_tokens:,} tokens (BPE {tok.vocab_size}, "
        f"{val_bytes_per_token:.2f} bytes per token)")
    # One BLAS thread: these matrices are too small to share, and on two busy cores a 2-thread
    # OpenBLAS call waits for its slower thread. At a load of ~4 a training step took 5 ms instead
    # of 7-12 (1 layer x 16 wide), 27 instead of 155 (2 x 64), 82 instead of 342 (4 x 112).
    # An OPENBLAS_NUM_THREADS the user set is left alone.
    threads = None if "OPENBLAS_NUM_THREADS" in os.environ else backend.blas_threads()
    if threads:
        backend.set_blas_threads(1)
    try:
        return _train_all(out, cfg, todo_now, data, tok, val_bytes_per_token, log)
    finally:
        if threads:
            backend.set_blas_threads(threads)


def _train_all(out: Path, cfg: SweepConfig, todo_now: list[dict], data, tok, val_bytes_per_token: float, log) -> dict:
    trained = 0
    for i, spec in enumerate(todo_now, 1):
        rec = _train_one(out, cfg, spec, data, tok)
        if rec is None:
            log(f"interrupted during {spec['name']}; the same command continues the sweep")
            return {"runs": finished_runs(out), "trained": trained, "interrupted": True}
        rec["val_bpb"] = rec["val_loss"] / math.log(2) / val_bytes_per_token
        rec["epochs"] = rec["tokens"] / len(data.train)
        _append(out / RUNS_FILE, rec)
        trained += 1
        log(f"[{i}/{len(todo_now)}] C {spec['budget']:.3g}: {spec['n_layer']} x {spec['n_embd']:<3} "
            f"N {spec['params']:>9,}  D {spec['tokens']:>10,} ({spec['tokens'] / spec['params']:6.1f}/param, "
            f"{spec['iters']} steps)  val {rec['val_loss']:.4f} nats/token, {rec['val_bpb']:.4f} bits/byte  "
            f"({rec['seconds']:.1f} s)")
    return {"runs": finished_runs(out), "trained": trained, "interrupted": False}


def _train_one(out: Path, cfg: SweepConfig, spec: dict, data, tok) -> dict | None:
    """One run through the Trainer; its record, or None when Ctrl-C stopped it."""
    mcfg = cfg.model_config(spec["n_layer"], spec["n_embd"])
    iters, lr = spec["iters"], cfg.lr_for(spec["n_embd"])
    tcfg = TrainConfig(out_dir=str(out / "runs" / spec["name"]), data=cfg.data, tokenizer="bpe",
                       bpe_vocab_size=cfg.vocab_size, device=cfg.device, seed=cfg.seed, batch_size=cfg.batch_size,
                       seq_len=cfg.seq_len, learning_rate=lr, max_iters=iters,
                       warmup_iters=max(1, round(cfg.warmup_fraction * iters)), lr_decay_iters=iters,
                       min_lr=lr * cfg.min_lr_ratio, eval_interval=iters, eval_iters=cfg.eval_iters,
                       log_interval=max(1, iters // 50), sample_tokens=0, progress=False)
    manual_seed(cfg.seed)
    model = GPT(mcfg)
    # overwrite: a run killed before it was recorded starts over
    trainer = Trainer(tcfg, resume=False, overwrite=True, log=lambda msg: None, model=model, tokenizer=tok, data=data)
    t0 = time.perf_counter()
    result = trainer.train()
    if trainer.interrupted:
        return None
    fpt = flops_per_token(mcfg)
    return {**spec, "n_head": mcfg.n_head, "params_non_embedding": param_count(mcfg, non_embedding=True),
            "six_n": fpt["six_n"], "flops": spec["flops_per_token"] * spec["tokens"],
            "val_loss": result["val"], "train_loss": result["train"], "seconds": time.perf_counter() - t0,
            "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "learning_rate": lr}


def _append(path: Path, record: dict) -> None:
    """One line, flushed to disk before the next run starts: a kill loses at most the run in progress."""
    cut = path.exists() and path.stat().st_size and path.read_bytes()[-1:] != b"\n"   # a line a kill cut short
    with open(path, "a") as f:
        f.write(("\n" if cut else "") + json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
