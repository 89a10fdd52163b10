"""`tinygrad-lm profile`: where the time of a training step goes, op by op.

Builds the model of a checkpoint or a pretrained model, runs warm-up steps (kernel compilation,
the allocator's first requests) and then N steps under tinygrad_lm.profile(), and prints its table
per step. A step is the one training loop's own (Trainer.train_step: forward, loss, backward,
gradient clipping, AdamW, zero_grad), on random tokens unless --data gives a text; the profile
shows what one step of `tinygrad-lm train` or `finetune --method full` costs."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from .. import backend
from ..profiler import profile
from .common import UsageError, add_model_args, compile_notice, load_source


def add_parser(sub) -> None:
    p = sub.add_parser("profile", help="time, FLOPs and bytes of every op in a training step")
    add_model_args(p, "profile")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=4, metavar="B",
                   help="sequences per step")
    p.add_argument("--seq-len", "--seq_len", dest="seq_len", type=int, default=None, metavar="T",
                   help="tokens per sequence (default: the model's context, at most 256)")
    p.add_argument("--steps", type=int, default=3, metavar="N", help="profiled steps (the table is per step)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="steps run first and not profiled")
    p.add_argument("--data", default=None, metavar="PATH",
                   help="draw batches from this text (default: random tokens; the cost of a step does not depend on them)")
    p.add_argument("--forward-only", "--forward_only", dest="forward_only", action="store_true",
                   help="profile inference instead: the forward pass alone, in eval mode, without the graph")
    p.add_argument("--kernels", choices=backend.KERNEL_MODES, default=None,
                   help="fast kernels or the readable references (default: the process's mode, fast unless "
                        f"{backend.KERNELS_ENV} says otherwise)")
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to run")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the profile as JSON")


class RandomTokens:
    """A batch source (what Trainer takes) of uniformly random token ids."""

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def check_block_size(self, block_size: int) -> None:
        pass   # any length can be drawn

    def get_batch(self, split: str, batch_size: int, block_size: int, rng: np.random.Generator):
        ids = rng.integers(0, self.vocab_size, (batch_size, block_size + 1), dtype=np.int64)
        return np.ascontiguousarray(ids[:, :-1]), np.ascontiguousarray(ids[:, 1:])


def run(args) -> int:
    for name in ("batch_size", "seq_len", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    model, tok = load_source(args.ckpt, args.model, args.device)
    room = model.config.block_size - model.num_virtual_tokens
    seq_len = args.seq_len or min(room, 256)
    if seq_len > room:
        raise UsageError(f"--seq-len {seq_len} does not fit the model's context of {room} positions")
    if args.data is None:
        data = RandomTokens(model.config.vocab_size)
    else:
        from ..data import load_dataset
        data, _ = load_dataset(args.data, tokenizer=tok)
    compile_notice(args.device)
    # Trainer needs an output folder, which a profile never writes to: an empty temporary one
    with backend.use_kernels(args.kernels or backend.kernel_mode()), tempfile.TemporaryDirectory() as out:
        step = _inference_step(model, data, seq_len, args) if args.forward_only else \
            _training_step(model, tok, data, seq_len, args, out)
        for _ in range(args.warmup):
            step()
        with profile() as p:
            for _ in range(args.steps):
                step()
        kernels = backend.kernel_mode()
    what = "forward only (eval mode, no graph)" if args.forward_only else \
        "training step: forward, loss, backward, clip_grad_norm, AdamW, zero_grad"
    source = args.ckpt or args.model
    print(f"{source}: {model.num_parameters():,} parameters; batch {args.batch_size} x {seq_len} tokens; {what}; "
          f"{_steps(args.steps)} after {args.warmup} warm-up; {kernels} kernels on {args.device}")
    print(p.table(steps=args.steps))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "source": str(source), "parameters": model.num_parameters(), "batch_size": args.batch_size,
            "seq_len": seq_len, "steps": args.steps, "warmup": args.warmup, "forward_only": args.forward_only,
            "kernels": kernels, "device": args.device, **p.to_dict()}, indent=1) + "\n")
    return 0


def _training_step(model, tok, data, seq_len: int, args, out: str):
    """The one training loop's step (Trainer.train_step), with the default training options."""
    from ..train import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(out_dir=out, batch_size=args.batch_size, seq_len=seq_len, device=args.device,
                                  progress=False), model=model, tokenizer=tok, data=data)
    return trainer.train_step


def _inference_step(model, data, seq_len: int, args):
    from ..tensor import no_grad
    model.to(args.device).eval()
    rng = np.random.default_rng(0)

    @no_grad()
    def step():
        x, _ = data.get_batch("train", args.batch_size, seq_len, rng)
        model(backend.to_device(x, args.device))
    return step


def _steps(n: int) -> str:
    return f"{n} step" + ("" if n == 1 else "s")
