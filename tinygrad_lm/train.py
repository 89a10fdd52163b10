"""The training loop: nanoGPT's train.py as a small class, with exact resume.

Everything that decides the next step is saved in the checkpoint: weights, AdamW state, the
batch generator's state, the global generator's state (dropout), and the step. Evaluation
draws its batches from its own fixed-seed generator, so evaluating never changes training,
and a resumed run is bit-for-bit the run that was never interrupted."""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import backend, distributed
from .checkpoint import (CKPT_NAME, LEGACY_CKPT_NAME, CheckpointError, checkpoint_step, load_checkpoint,
                         save_checkpoint)
from .models import GPT, GPTConfig
from .optim import clip_grad_norm, cosine_with_warmup, set_lr
from .tensor import get_rng_state, manual_seed, no_grad, set_rng_state


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message names the step."""


class RunExistsError(FileExistsError):
    """The output folder holds a run, and neither resuming nor starting over was asked for."""


RUN_FILES = (CKPT_NAME, LEGACY_CKPT_NAME, "log.jsonl", "loss.png")  # what a run writes (or an older version wrote)


@dataclass
class TrainConfig:
    """Training options, named as in nanoGPT's train.py."""
    out_dir: str = "out"
    data: str | None = None            # text file or folder; None: the built-in corpus
    tokenizer: str = "char"            # "char" | "byte" | "bpe"
    bpe_vocab_size: int = 4096         # tokens of the BPE trained on the training text (tokenizer "bpe")
    device: str = "cpu"
    seed: int = 1337
    batch_size: int = 12
    seq_len: int | None = None         # tokens per training sequence; None: the model's block_size
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    max_iters: int = 2000
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    min_lr: float = 1e-4
    decay_lr: bool = True
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.1
    grad_clip: float = 1.0             # 0 disables clipping
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    sample_tokens: int = 200           # length of the sample printed at the end (0: none)
    progress: bool = True              # tqdm progress bar

    def __post_init__(self):
        for name in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "log_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters", "sample_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr ({self.min_lr}) must be <= learning_rate ({self.learning_rate})")
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1):
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool)
                                         or self.seq_len <= 0):
            raise ValueError(f"seq_len must be a positive integer or None, got {self.seq_len!r}")
        if self.tokenizer not in ("char", "byte", "bpe"):
            raise ValueError(f"tokenizer must be 'char', 'byte' or 'bpe', got {self.tokenizer!r}")
        v = self.bpe_vocab_size
        if not isinstance(v, int) or isinstance(v, bool) or v < 257:
            raise ValueError(f"bpe_vocab_size must be an integer >= 257 (the 256 bytes and <|endoftext|>), got {v!r}")
        self.device = backend.normalize_device(self.device)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class Trainer:
    """Builds (or resumes) model, optimizer and data from configs, then runs ``train()``.

    A folder that already holds a run is never replaced silently: ``resume=True`` continues it,
    ``overwrite=True`` deletes it and starts over, otherwise RunExistsError. After ``train()``,
    ``interrupted`` says whether Ctrl-C stopped it and ``last_eval_iter`` is the step of the last
    evaluation it returned."""

    def __init__(self, tcfg: TrainConfig, mcfg: dict | None = None, resume: bool = False, log=print, *,
                 overwrite: bool = False, model=None, tokenizer=None, meta: dict | None = None, data=None):
        """model + tokenizer: train this model (a pretrained one, a PeftModel) instead of building one
        from mcfg; its frozen parameters are neither optimized nor saved. data: a batch source with
        TokenData's get_batch/check_block_size (e.g. align.sft.SFTData) instead of tcfg.data's text.
        meta: JSON-able facts saved in every checkpoint (e.g. how fine-tuning built the model)."""
        from .data import load_dataset
        if (model is None) != (tokenizer is None):
            raise ValueError("Trainer: pass model and tokenizer together (the data is tokenized with the model's)")
        self.cfg, self.log, self.extra_meta = tcfg, log, dict(meta or {})
        self.out = Path(tcfg.out_dir)
        self.ckpt = None
        self.interrupted, self.last_eval_iter = False, None
        self._start_over = False
        self.world = distributed.world(tcfg.device)  # one process, or this rank of an mpiexec job
        # a rank that cannot set up (a file missing on its machine) stops every rank, not only itself
        with self.world.together("while setting up the run"):
            if not resume:
                held = existing_run(self.out)
                self._start_over = bool(held)
                if held and not overwrite:
                    raise RunExistsError(f"{self.out} already holds a training run ({held}); "
                                         f"continue it with --resume, start over with --overwrite, or choose "
                                         f"another --out")
            if resume:
                self.ckpt = load_checkpoint(self.out)
                meta = self.ckpt["meta"]
                lacking = [k for k in ("train_config", "batch_rng", "global_rng") if k not in meta]
                if lacking:
                    raise CheckpointError(f"checkpoint {self.ckpt['path']} cannot resume training: it lacks "
                                          f"{', '.join(lacking)} (not saved by a Trainer?)")
                # the run's own settings win: a resumed run must be the same run
                saved = meta["train_config"]
                for k in ("data", "tokenizer", "seed", "batch_size", "gradient_accumulation_steps"):
                    setattr(tcfg, k, saved[k])
                from .tokenizers import tokenizer_from_dict
                tokenizer = tokenizer or tokenizer_from_dict(meta["tokenizer"])
                self.data, self.tokenizer = (data, tokenizer) if data is not None else \
                    load_dataset(tcfg.data, tokenizer=tokenizer)
                self.model_config = GPTConfig.from_dict(meta["model_config"])
            elif data is not None:
                self.data, self.tokenizer = data, tokenizer or getattr(data, "tokenizer", None)
                if self.tokenizer is None:
                    raise ValueError(f"Trainer: data of type {type(data).__name__} has no tokenizer; pass tokenizer=")
            elif tokenizer is not None:
                self.data, self.tokenizer = load_dataset(tcfg.data, tokenizer=tokenizer)
            else:
                self.data, self.tokenizer = load_dataset(tcfg.data, tokenizer=tcfg.tokenizer,
                                                         bpe_vocab_size=tcfg.bpe_vocab_size, progress=tcfg.progress)
            if model is not None:
                self.model_config = model.config
            elif not resume:   # a new model of mcfg's shape, its vocabulary the tokenizer's
                self.model_config = GPTConfig(**{**(mcfg or {}), "vocab_size": self.tokenizer.vocab_size})
            G, n = tcfg.gradient_accumulation_steps, self.world.size
            if G % n:
                raise ValueError(f"gradient_accumulation_steps ({G}) must be divisible by the number of ranks ({n}): "
                                 f"each rank runs an equal share of a step's micro-batches (e.g. {n * -(-G // n)})")
            if n > 1 and hasattr(self.data, "evaluate"):
                raise ValueError(f"{type(self.data).__name__} (ppo's rollouts) under mpiexec is not supported yet: a batch "
                                 "source that samples and evaluates itself is not split across ranks; run it as one process")
            self._data_path = str(Path(tcfg.data).resolve()) if tcfg.data is not None else None
            # the window a batch row holds; a soft prompt's virtual tokens take positions of the context too
            room = self.model_config.block_size - (model.num_virtual_tokens if model is not None else 0)
            self.seq_len = tcfg.seq_len or room
            if self.seq_len > room:
                raise ValueError(f"seq_len {self.seq_len} does not fit the model's context of {room} positions")
            self.data.check_block_size(self.seq_len)
            manual_seed(tcfg.seed)
            self.model = (GPT(self.model_config) if model is None else model).to(tcfg.device).train()
            if self.world.rank > 0:  # dropout: every rank a stream of its own (rank 0 keeps one process's)
                set_rng_state(_rank_rng_state(tcfg.seed, self.world.rank, 0))
            self.optimizer = self.model.configure_optimizers(tcfg.weight_decay, tcfg.learning_rate,
                                                             (tcfg.beta1, tcfg.beta2))
            self.batch_rng = np.random.default_rng(tcfg.seed)
            self.step, self.best_val = 0, math.inf
            if self.ckpt is not None:
                self._restore(self.ckpt)
        self.world.broadcast_parameters(self.model.parameters())  # rank 0's weights, on every rank

    # ---- state ----------------------------------------------------------------------------
    def _restore(self, ckpt):
        meta = ckpt["meta"]
        try:
            if meta.get("trainable_only"):  # the frozen rest came from the base model, as it did before
                trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
                if set(ckpt["model"]) != trainable:
                    raise KeyError(f"it holds {sorted(set(ckpt['model']) ^ trainable)[:3]} where the model's "
                                   "trainable parameters differ")
                self.model.load_state_dict(ckpt["model"], strict=False)
            else:
                self.model.load_state_dict(ckpt["model"])
            if ckpt["optimizer"] is not None:
                self.optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"checkpoint {ckpt['path']} does not fit its own model config: {e}") from None
        self.step, self.best_val = meta["step"], meta.get("best_val_loss", math.inf)
        self.batch_rng.bit_generator.state = meta["batch_rng"]
        # each rank's dropout stream as it was saved; a rank the saving run did not have starts a new one
        states, rank = meta.get("rank_rngs") or [meta["global_rng"]], self.world.rank
        set_rng_state(states[rank] if rank < len(states) else _rank_rng_state(self.cfg.seed, rank, self.step))
        if "data_state" in meta and hasattr(self.data, "load_state_dict"):
            self.data.load_state_dict(meta["data_state"])

    def save(self):
        """Write the checkpoint; returns its path (None on ranks other than 0, which only add their
        RNG state: under mpiexec every rank calls this)."""
        rng_states = self.world.allgather_json(get_rng_state())  # dropout: one stream per rank
        with self.world.together("while saving the checkpoint"):  # rank 0's disk is full: every rank stops
            if self.world.rank != 0:
                return None
            config = asdict(self.cfg)
            if config["data"] is not None:  # absolute, so --resume works from any folder
                config["data"] = self._data_path
            meta = {**self.extra_meta, "model_config": self.model_config.to_dict(), "train_config": config,
                    "tokenizer": self.tokenizer.to_dict(), "step": self.step, "best_val_loss": self.best_val,
                    "batch_rng": self.batch_rng.bit_generator.state, "global_rng": get_rng_state()}
            if self.world.size > 1:
                meta["rank_rngs"] = rng_states
            if hasattr(self.data, "state_dict"):   # a batch source with a state of its own (PPO's round, KL coefficient)
                meta["data_state"] = self.data.state_dict()
            frozen = any(not p.requires_grad for p in self.model.parameters())
            if frozen:  # fine-tuning: the base is not saved again at every evaluation
                meta["trainable_only"] = True
                state = {n: backend.to_numpy(p.data).copy() for n, p in self.model.named_parameters()
                         if p.requires_grad}
            else:
                state = self.model.state_dict()
            path = save_checkpoint(self.out, state, meta, self.optimizer.state_dict())
            (self.out / LEGACY_CKPT_NAME).unlink(missing_ok=True)  # a resumed old run: one folder, one checkpoint
        return path

    # ---- pieces of a step -----------------------------------------------------------------
    def _batch(self, split, rng):
        """The arrays the model's forward takes, on the device: (x, y) of a corpus or SFT data, more
        for a phase whose loss needs more (PPO's rollout minibatches)."""
        batch = self.data.get_batch(split, self.cfg.batch_size, self.seq_len, rng)
        return tuple(backend.to_device(a, self.cfg.device) for a in batch)

    def lr_at(self, it: int) -> float:
        c = self.cfg
        if not c.decay_lr:
            return c.learning_rate
        return cosine_with_warmup(it, c.learning_rate, c.warmup_iters, max(c.lr_decay_iters, c.warmup_iters), c.min_lr)

    @no_grad()
    def evaluate(self) -> dict:
        """Mean loss over eval_iters batches of each split, from a fixed-seed generator; or, when
        the batch source has its own ``evaluate(model)`` (PPO's rollouts: the loss is the negated
        RL objective of fresh samples), what that returns: {"train", "val", and any statistics}."""
        self.model.eval()
        try:
            own = getattr(self.data, "evaluate", None)
            if own is not None:
                return dict(own(self.model))
            out, n = {}, self.cfg.eval_iters
            for split in ("train", "val"):
                rng = np.random.default_rng(self.cfg.seed + 1)
                losses = np.zeros(n)  # each rank fills in its share of the batches; the sum gives every one
                with self.world.together(f"while evaluating at iter {self.step}"):
                    for i in range(n):
                        batch = self._batch(split, rng)  # every rank draws every batch: one stream
                        if i in self.world.shard(n):
                            losses[i] = self.model(*batch)[1].item()
                out[split] = float(np.mean(self.world.sum(losses)))
            return out
        finally:
            self.model.train()

    def train_step(self) -> float:
        """One optimizer step (with gradient accumulation); returns the mean micro-batch loss.
        Under mpiexec each rank runs its share of the micro-batches (as nanoGPT splits them) and the
        gradients are summed over the ranks: the step one process would take."""
        c, n = self.cfg, self.cfg.gradient_accumulation_steps
        set_lr(self.optimizer, self.lr_at(self.step))
        losses = np.zeros(n)  # each micro-batch's loss, filled in by the rank that ran it
        with self.world.together(f"at iter {self.step}"):
            for i in range(n):
                # every rank draws every micro-batch, so the stream is one process's, and runs its own
                batch = self._batch("train", self.batch_rng)
                if i not in self.world.shard(n):
                    continue
                _, loss = self.model(*batch)
                losses[i] = loss.item()
                if not math.isfinite(losses[i]):
                    raise TrainingError(f"loss is {losses[i]} at iter {self.step}; training stopped "
                                        f"(the last good checkpoint is in {self.out})")
                (loss / n).backward()  # 1/n of the whole step's batch: the ranks' sum is the mean
        self.world.allreduce_gradients(self.model.parameters())
        if c.grad_clip > 0:
            norm = clip_grad_norm(self.model.parameters(), c.grad_clip)
            if not math.isfinite(norm):
                raise TrainingError(f"gradient norm is {norm} at iter {self.step}; training stopped "
                                    f"(the last good checkpoint is in {self.out})")
        self.optimizer.step()
        self.optimizer.zero_grad()
        return sum(self.world.sum(losses).tolist()) / n  # summed in order, as one process adds them up

    # ---- the loop ---------------------------------------------------------------------------
    def train(self) -> dict:
        """Train until max_iters; Ctrl-C saves a checkpoint first (and sets ``interrupted``).
        Returns the last evaluation ({"train": loss, "val": loss}, made at ``last_eval_iter``)."""
        c, w = self.cfg, self.world
        lead = w.rank == 0  # under mpiexec only rank 0 writes files and prints
        if lead:
            self.out.mkdir(parents=True, exist_ok=True)
            if self._start_over:  # asked for (overwrite=True): no file of the old run may be mixed in
                for name in RUN_FILES:
                    (self.out / name).unlink(missing_ok=True)
            if self.ckpt is not None:  # a crash may have logged steps after the checkpoint: they are redone
                _keep_log_until(self.out / "log.jsonl", self.step)
        self._start_over = False
        logf = open(self.out / "log.jsonl", "a" if self.ckpt is not None else "w") if lead else None
        stop = {"flag": False}

        def record(rec):  # one line of log.jsonl
            if logf is not None:
                logf.write(json.dumps(rec) + "\n")
                logf.flush()

        def on_sigint(signum, frame):  # finish the current step, save, then exit
            if stop["flag"]:
                raise KeyboardInterrupt
            stop["flag"] = True

        old_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
        bar = _progress(c, self.step) if lead else None

        def say(msg):  # through the progress bar: cleared, the line printed, the bar redrawn below it
            if not lead:
                return
            if bar is None:
                self.log(msg)
            else:
                with bar.external_write_mode():
                    self.log(msg)

        tokens_per_iter = c.batch_size * c.gradient_accumulation_steps * self.seq_len
        last_eval = {}
        resumed_at = self.step if self.ckpt is not None else None
        if w.size > 1:
            say(f"data parallel over {w.size} ranks: each runs {c.gradient_accumulation_steps // w.size} of the "
                f"{c.gradient_accumulation_steps} micro-batches of a step")
        if resumed_at is not None:
            say(f"resuming from iter {self.step} ({self.ckpt['path']})")
        try:
            while True:
                if self.step % c.eval_interval == 0 or self.step == c.max_iters:
                    if self.step != resumed_at:  # a resumed run already evaluated this step
                        last_eval, self.last_eval_iter = self.evaluate(), self.step
                        extra = {k: v for k, v in last_eval.items() if k not in ("train", "val")}
                        rec = {"iter": self.step, "train_loss": last_eval["train"], "val_loss": last_eval["val"],
                               "lr": self.lr_at(self.step), "eval": True, **extra}
                        record(rec)
                        say(f"step {self.step}: train loss {last_eval['train']:.4f}, val loss {last_eval['val']:.4f}"
                            + "".join(f", {k} {v:.4g}" for k, v in extra.items() if isinstance(v, float)))
                        self.best_val = min(self.best_val, last_eval["val"])
                        self.save()
                stopping = w.any(stop["flag"])  # Ctrl-C reached any rank: every rank stops at this step
                if self.step >= c.max_iters or stopping:
                    break
                t0 = time.perf_counter()
                loss = self.train_step()
                dt = time.perf_counter() - t0
                self.step += 1
                if self.step % c.log_interval == 0 or self.step == 1:
                    # a phase's own statistics of its last step (DPO's reward margins, PPO's clip fraction...;
                    # under mpiexec, of rank 0's last micro-batch)
                    rec = {"iter": self.step, "train_loss": loss, "lr": self.lr_at(self.step - 1),
                           "ms_per_iter": dt * 1e3, "tokens_per_s": tokens_per_iter / dt,
                           **({"allreduce_ms": w.last_allreduce_s * 1e3} if w.size > 1 else {}),
                           **(getattr(self.model, "last_stats", None) or {})}
                    record(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.lr_at(self.step - 1):.2e}",
                                    tok_s=f"{tokens_per_iter / dt:,.0f}", refresh=False)
                    bar.update(1)
            if stopping:
                self.save()
                self.interrupted = True
                say(f"interrupted: checkpoint saved at iter {self.step} in {self.out}")
        finally:
            if bar is not None:
                bar.close()
            if logf is not None:
                logf.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        if lead:
            plot_losses(self.out / "log.jsonl", self.out / "loss.png")
        return last_eval


def existing_run(out: Path) -> str:
    """What of a run ``out`` holds ("" if nothing), e.g. "ckpt.safetensors at iter 2000, log.jsonl"."""
    found = [name for name in RUN_FILES if (out / name).exists()]
    # the first found is the checkpoint that loads (ckpt.safetensors before an old ckpt.npz), if any
    step = checkpoint_step(out) if found and found[0] in (CKPT_NAME, LEGACY_CKPT_NAME) else None
    if step is not None:  # an unreadable checkpoint is still a file nobody asked us to replace
        found[0] = f"{found[0]} at iter {step}"
    return ", ".join(found)


def _rank_rng_state(seed: int, rank: int, step: int) -> dict:
    """The global generator's state for a rank > 0 of an mpiexec run (dropout): its own stream,
    derived from the seed, the rank, and the step it starts at."""
    return np.random.default_rng([seed, rank, step]).bit_generator.state


def _keep_log_until(path: Path, step: int) -> None:
    """Drop log records after ``step`` (and a last line cut short by a crash)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["iter"] <= step:
                keep.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            pass
    path.write_text("".join(keep))


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _progress(cfg: TrainConfig, start: int):
    if not cfg.progress:
        return None
    from tqdm import tqdm
    return tqdm(total=cfg.max_iters, initial=start, desc="train", unit="it", file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5)


def plot_losses(log_path: Path, png_path: Path) -> Path | None:
    """Write a loss-curve PNG from log.jsonl if matplotlib is installed (the `plot` extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    recs = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    train = [(r["iter"], r["train_loss"]) for r in recs if not r.get("eval")]
    val = [(r["iter"], r["val_loss"]) for r in recs if r.get("eval")]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train (batch)", alpha=0.6)
    if val:
        ax.plot(*zip(*val), "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")   # cross-entropy, or a phase's own (Bradley-Terry, DPO, PPO)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
