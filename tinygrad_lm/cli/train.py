"""`tinygrad-lm train`: every GPTConfig / TrainConfig field as a flag, run folders that are never
replaced silently, and honest reports (the last evaluation's own step, exit 130 on Ctrl-C)."""
from __future__ import annotations

import argparse
import itertools
from dataclasses import fields
from pathlib import Path

from ..checkpoint import CKPT_NAME
from ..models import GPT, GPTConfig
from ..models.gpt import NORM_KINDS, POS_KINDS
from ..nn.block import MLP_KINDS
from ..nn.positional import ROPE_PAIRINGS
from ..presets import DEFAULT_PRESET, PRESETS, get_preset
from ..tensor import manual_seed
from ..tokenizers import TOKENIZER_KINDS
from ..train import TrainConfig, Trainer, existing_run
from .common import PROG, compile_notice, load_checkpoint, parse_bool, prompt_ids, stream

DEFAULT_OUT = "out"
# ChatML's turn markers (the chat template's default, tokenizers/chat.py): a model pre-trained with
# them as single tokens can be instruction-tuned and stop at the end of its turn
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
# flags written out by hand; every other GPTConfig / TrainConfig field becomes --name VALUE
_EXPLICIT = {"out_dir", "data", "tokenizer", "bpe_vocab_size", "device", "seed", "vocab_size", "progress",
             "rope_scaling"}  # rope_scaling is a dict: it comes from pretrained configs, not from a flag
# one line of --help for every model and training field that is a flag (a test keeps this complete)
FIELD_HELP = {
    "block_size": "context length in tokens",
    "n_layer": "number of transformer blocks",
    "n_head": "attention heads per block",
    "n_kv_head": "key/value heads (grouped-query attention; must divide n_head; default: n_head)",
    "n_embd": "width of the residual stream (a multiple of n_head)",
    "dropout": "dropout probability while training",
    "bias": "biases in Linear and norm layers",
    "pos": "position encoding",
    "norm": "normalisation layer",
    "mlp": "MLP activation (gelu: exact erf; gelu_tanh: GPT-2's; swiglu: Llama's)",
    "tie_weights": "the output layer shares the token embedding matrix",
    "mlp_hidden": "MLP hidden units (default: 4*n_embd; swiglu: 8/3*n_embd rounded up to 8)",
    "head_dim": "size of each attention head (default: n_embd / n_head)",
    "qkv_bias": "biases on the query/key/value projection (default: same as --bias)",
    "norm_eps": "epsilon of the norm layers (default: 1e-5 layernorm, 1e-6 rmsnorm)",
    "rope_theta": "RoPE base (with --pos rope)",
    "rope_pairing": "which features RoPE rotates together: half (HF rotate_half) or adjacent (llama.cpp)",
    "batch_size": "sequences per micro-batch",
    "seq_len": "tokens per training sequence (default: block_size)",
    "gradient_accumulation_steps": "micro-batches per optimizer step",
    "learning_rate": "peak learning rate",
    "max_iters": "optimizer steps to train for",
    "warmup_iters": "steps of linear learning-rate warm-up",
    "lr_decay_iters": "step where the cosine decay reaches min_lr (default: max_iters)",
    "min_lr": "learning rate at the end of the decay",
    "decay_lr": "warm-up + cosine decay (false: constant learning_rate)",
    "beta1": "AdamW's beta1",
    "beta2": "AdamW's beta2",
    "weight_decay": "AdamW's decoupled weight decay (2-D weights only)",
    "grad_clip": "clip the global gradient norm to this (0: no clipping)",
    "eval_interval": "evaluate and save a checkpoint every N steps",
    "eval_iters": "batches per split in each evaluation",
    "log_interval": "write a log.jsonl record every N steps",
    "sample_tokens": "length of the sample printed at the end (0: none)",
}
FIELD_CHOICES = {"pos": POS_KINDS, "norm": NORM_KINDS, "mlp": MLP_KINDS, "rope_pairing": ROPE_PAIRINGS}
FLAG_ALIASES = {"learning_rate": ["--lr"]}  # nanoGPT users type --lr


def _field_type(f):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if "bool" in t:
        return parse_bool
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def _config_flags(classes=(GPTConfig, TrainConfig)):
    """(field, type) for every GPTConfig / TrainConfig field that is a --flag."""
    return [f for cls in classes for f in fields(cls) if f.name not in _EXPLICIT]


def _add_config_flags(p: argparse.ArgumentParser, classes=(GPTConfig, TrainConfig), defaults: dict | None = None,
                      title: str | None = None):
    """A --flag for every field of ``classes``; ``defaults``: the values shown (default: the default preset's)."""
    if defaults is None:
        preset = get_preset(DEFAULT_PRESET)
        defaults = {**preset["model"], **preset["train"]}
    defaults = {**{f.name: f.default for cls in classes for f in fields(cls)}, **defaults}
    group = p.add_argument_group(title or (
        f"model and training fields (defaults shown are --preset {DEFAULT_PRESET}'s; another --preset changes "
        f"them, --resume keeps the run's own; each also takes --name=value and --name-with-dashes)"))
    for f in _config_flags(classes):
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        names += FLAG_ALIASES.get(f.name, [])
        typ = _field_type(f)
        default = defaults[f.name]
        help_text = FIELD_HELP[f.name]
        if "default:" not in help_text:
            help_text += f" (default: {str(default).lower() if typ is parse_bool else default})"
        choices = FIELD_CHOICES.get(f.name)
        metavar = None if choices else {int: "N", float: "X", parse_bool: "{true,false}"}.get(typ, "V")
        group.add_argument(*names, dest=f.name, type=typ, default=None, help=help_text, metavar=metavar,
                           choices=choices)


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a GPT (no arguments: the tiny preset on the built-in corpus)",
                       description="Train a GPT; prints evaluations, then the final loss and a sample.")
    t.add_argument("--data", metavar="PATH",
                   help="UTF-8 text file or folder (default: the first 4 MB of this Python's standard library source)")
    t.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="char",
                   help="char: the text's own characters; byte: UTF-8 bytes, any text; bpe: a byte-level BPE "
                        "trained on the training text first (cached), stored in the checkpoint")
    t.add_argument("--vocab_size", "--vocab-size", dest="bpe_vocab_size", type=int, default=4096, metavar="N",
                   help="tokens of the BPE vocabulary (with --tokenizer bpe)")
    t.add_argument("--chat-tokens", "--chat_tokens", dest="chat_tokens", action="store_true",
                   help="add ChatML's special tokens " + " and ".join(CHAT_TOKENS) + " to the byte or bpe tokenizer, "
                        "so the model can later be instruction-tuned (`sft`) and chat (a --resume keeps the run's own "
                        "tokenizer)")
    t.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET, metavar="{" + ",".join(PRESETS) + "}",
                   help="model and training recipe: " + "; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()))
    t.add_argument("--out", "--out_dir", dest="out_dir", default=None, metavar="DIR",
                   help=f"folder for the checkpoint, log.jsonl, loss.png (default: {DEFAULT_OUT}, or {DEFAULT_OUT}-2, "
                        f"{DEFAULT_OUT}-3... if it holds a run; with --resume, the newest of those)")
    t.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to train")
    fate = t.add_mutually_exclusive_group()  # what to do with a run already in --out
    fate.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    fate.add_argument("--overwrite", action="store_true", help="delete the run saved in --out and start over")
    t.add_argument("--seed", type=int, default=1337, metavar="N", help="seed of the weights and batches")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(t)


def _run_folder(args) -> str:
    """--out as given; else DEFAULT_OUT, or the first free DEFAULT_OUT-N when it holds a run, so
    running the main job twice never replaces the first run (--resume: the newest of them)."""
    if args.out_dir is not None:
        return args.out_dir
    names = [DEFAULT_OUT] + [f"{DEFAULT_OUT}-{n}" for n in range(2, 10_000)]
    held = list(itertools.takewhile(lambda name: existing_run(Path(name)), names))  # made in order
    if args.resume:
        return held[-1] if held else DEFAULT_OUT
    if args.overwrite or not held:
        return DEFAULT_OUT
    print(f"{DEFAULT_OUT}/ holds an earlier run; this one goes to {names[len(held)]}/ (--out chooses the folder)",
          flush=True)
    return names[len(held)]


def chat_tokenizer(kind: str, data, bpe_vocab_size: int, progress: bool = False):
    """The ``kind`` tokenizer of a training run with CHAT_TOKENS added as special tokens after its
    own (byte: ids 257, 258 after <|endoftext|>; bpe: the BPE `train` trains on the data, with two
    more ids). A char tokenizer has no special tokens: ValueError."""
    from ..tokenizers import DEFAULT_SPECIAL_TOKENS, BPETokenizer, ByteTokenizer
    if kind == "byte":
        return ByteTokenizer(list(DEFAULT_SPECIAL_TOKENS) + list(CHAT_TOKENS))
    if kind == "bpe":
        from ..data import load_dataset
        # the BPE a plain `train --tokenizer bpe` would train (cached), then the chat tokens after its ids
        bpe = load_dataset(data, tokenizer="bpe", bpe_vocab_size=bpe_vocab_size, progress=progress)[1]
        added = [s for s in CHAT_TOKENS if s not in bpe.special_tokens]
        specials = {**bpe.special_tokens, **{s: bpe.vocab_size + i for i, s in enumerate(added)}}
        return BPETokenizer(bpe.vocab, bpe.merges, bpe.pattern, specials)
    raise ValueError(f"--chat-tokens: a {kind} tokenizer has no special tokens; use --tokenizer byte or bpe")


def run(args) -> int:
    preset = get_preset(args.preset)
    args.out_dir = _run_folder(args)
    mcfg = dict(preset["model"])
    tvals = dict(preset["train"])
    if args.resume:  # a resumed run keeps its own settings (not the preset's); flags given now still win
        saved = load_checkpoint(args.out_dir)["meta"].get("train_config")
        names = set(TrainConfig.field_names()) - _EXPLICIT
        tvals.update({k: v for k, v in (saved if isinstance(saved, dict) else {}).items() if k in names})
    for f in fields(GPTConfig):
        if getattr(args, f.name, None) is not None and f.name not in _EXPLICIT:
            mcfg[f.name] = getattr(args, f.name)
    for f in fields(TrainConfig):
        if f.name not in _EXPLICIT and getattr(args, f.name, None) is not None:
            tvals[f.name] = getattr(args, f.name)
    if not args.resume and getattr(args, "lr_decay_iters", None) is None and args.max_iters is not None:
        tvals["lr_decay_iters"] = tvals["max_iters"]  # a shorter run decays over its own length
    tcfg = TrainConfig(out_dir=args.out_dir, data=args.data, tokenizer=args.tokenizer, device=args.device,
                       seed=args.seed, progress=not args.quiet, bpe_vocab_size=args.bpe_vocab_size, **tvals)
    GPTConfig(**{**mcfg, "vocab_size": 1})  # validate the model options before loading any data
    model = tok = None
    if args.chat_tokens and not args.resume:
        tok = chat_tokenizer(args.tokenizer, args.data, args.bpe_vocab_size, not args.quiet)
        manual_seed(args.seed)  # the same initial weights the Trainer would draw for this vocabulary
        model = GPT(GPTConfig(**{**mcfg, "vocab_size": tok.vocab_size}))
    trainer = Trainer(tcfg, mcfg, resume=args.resume, overwrite=args.overwrite, log=lambda s: print(s, flush=True),
                      model=model, tokenizer=tok)
    m = trainer.model
    d = trainer.data
    print(f"data: {d.source}, {d.num_tokens:,} tokens ({len(d.train):,} train / {len(d.val):,} val), "
          f"vocab {trainer.tokenizer.vocab_size}; model: {m.num_params() / 1e6:.2f}M parameters", flush=True)
    compile_notice(tcfg.device)
    result = trainer.train()
    last = (f"train loss {result['train']:.4f}, val loss {result['val']:.4f} (iter {trainer.last_eval_iter})"
            if result else None)
    if trainer.interrupted:  # the checkpoint is saved (the trainer said where); no sample, exit as shells expect
        if last:
            print(f"last evaluation: {last}")
        print(f"continue with: {PROG} train --resume --out {trainer.out}")
        return 130
    if last:
        print(f"final: {last}")
    if tcfg.sample_tokens and trainer.world.rank == 0:  # under mpiexec: rank 0 samples and prints
        tok = trainer.tokenizer
        print("sample:")
        m.eval()  # no dropout while sampling
        stream(m, tok, prompt_ids(tok, ""), tcfg.sample_tokens, 0.8, 200, None, tcfg.seed)
    print(f"checkpoint: {trainer.out / CKPT_NAME}")
    return 0
