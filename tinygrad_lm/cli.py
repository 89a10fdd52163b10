"""`tinygrad-lm`: train, generate, eval and info from the command line.

Bad input (a missing file, an invalid value, a corrupt checkpoint...) prints one line
"tinygrad-lm: error: ..." and exits with code 2, without a traceback."""
from __future__ import annotations

import argparse
import codecs
import itertools
import math
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

from . import __version__, backend
from .checkpoint import CheckpointError, load_checkpoint
from .models import GPT, GPTConfig
from .models.gpt import NORM_KINDS, POS_KINDS
from .nn.block import MLP_KINDS
from .presets import DEFAULT_PRESET, PRESETS, get_preset
from .sampling import check_sampling_args
from .tokenizers import TOKENIZER_KINDS, UnknownCharactersError
from .train import TrainConfig, Trainer, TrainingError, existing_run

PROG = "tinygrad-lm"
DEFAULT_OUT = "out"
# flags written out by hand; every other GPTConfig / TrainConfig field becomes --name VALUE
_EXPLICIT = {"out_dir", "data", "tokenizer", "bpe_vocab_size", "device", "seed", "vocab_size", "progress"}
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
    "batch_size": "sequences per micro-batch",
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
FIELD_CHOICES = {"pos": POS_KINDS, "norm": NORM_KINDS, "mlp": MLP_KINDS}
FLAG_ALIASES = {"learning_rate": ["--lr"]}  # nanoGPT users type --lr


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """One-line errors; no prefix matching (``--lr`` must never be "ambiguous", and a typo must
    not silently select another option); help text shows every default."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line instead of argparse's usage block
        raise UsageError(message)


class _HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to an option's help when it has a default worth showing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default:" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _field_type(f):
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if "bool" in t:
        return _bool
    if "int" in t:
        return int
    if "float" in t:
        return float
    return str


def _config_flags():
    """(field, type) for every GPTConfig / TrainConfig field that is a --flag."""
    return [f for cls in (GPTConfig, TrainConfig) for f in fields(cls) if f.name not in _EXPLICIT]


def _add_config_flags(p: argparse.ArgumentParser):
    preset = get_preset(DEFAULT_PRESET)
    defaults = {**{f.name: f.default for cls in (GPTConfig, TrainConfig) for f in fields(cls)},
                **preset["model"], **preset["train"]}
    group = p.add_argument_group(
        f"model and training fields (defaults shown are --preset {DEFAULT_PRESET}'s; another --preset changes "
        f"them, --resume keeps the run's own; each also takes --name=value and --name-with-dashes)")
    for f in _config_flags():
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        names += FLAG_ALIASES.get(f.name, [])
        typ = _field_type(f)
        default = defaults[f.name]
        help_text = FIELD_HELP[f.name]
        if "default:" not in help_text:
            help_text += f" (default: {str(default).lower() if typ is _bool else default})"
        choices = FIELD_CHOICES.get(f.name)
        metavar = None if choices else {int: "N", float: "X", _bool: "{true,false}"}.get(typ, "V")
        group.add_argument(*names, dest=f.name, type=typ, default=None, help=help_text, metavar=metavar,
                           choices=choices)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Train and sample a small GPT written from scratch on NumPy. "
                "With no arguments: `train` with its defaults.")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="{" + ",".join(COMMANDS) + "}")

    t = sub.add_parser("train", help="train a GPT (no arguments: the tiny preset on the built-in corpus)",
                       description="Train a GPT; prints evaluations, then the final loss and a sample.")
    t.add_argument("--data", metavar="PATH",
                   help="UTF-8 text file or folder (default: the first 4 MB of this Python's standard library source)")
    t.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default="char",
                   help="char: the text's own characters; byte: UTF-8 bytes, any text; bpe: a byte-level BPE "
                        "trained on the training text first (cached), stored in the checkpoint")
    t.add_argument("--vocab_size", "--vocab-size", dest="bpe_vocab_size", type=int, default=4096, metavar="N",
                   help="tokens of the BPE vocabulary (with --tokenizer bpe)")
    t.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET, metavar="{" + ",".join(PRESETS) + "}",
                   help="model and training recipe: " + "; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()))
    t.add_argument("--out", "--out_dir", dest="out_dir", default=None, metavar="DIR",
                   help=f"folder for ckpt.npz, log.jsonl, loss.png (default: {DEFAULT_OUT}, or {DEFAULT_OUT}-2, "
                        f"{DEFAULT_OUT}-3... if it holds a run; with --resume, the newest of those)")
    t.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to train")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--overwrite", action="store_true", help="delete the run saved in --out and start over")
    t.add_argument("--seed", type=int, default=1337, metavar="N", help="seed of the weights and batches")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(t)

    g = sub.add_parser("generate", help="stream text from a checkpoint")
    g.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint folder (or its ckpt.npz)")
    g.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=500,
                   metavar="N", help="tokens to generate")
    g.add_argument("--temperature", type=float, default=0.8, metavar="X",
                   help="softmax temperature; 0: greedy (always the most likely token)")
    g.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=200, metavar="N",
                   help="sample among the N most likely tokens only")
    g.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=None, metavar="P",
                   help="sample among the most likely tokens whose probabilities add up to P (default: off)")
    g.add_argument("--seed", type=int, default=None, metavar="N", help="seed for a repeatable sample (default: random)")
    g.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to run")

    e = sub.add_parser("eval", help="loss and perplexity of a checkpoint on a text")
    e.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint folder (or its ckpt.npz)")
    e.add_argument("--data", default=None, metavar="PATH", help="text file or folder (default: the built-in corpus)")
    e.add_argument("--split", choices=("val", "train", "all"), default="val",
                   help="which part of the text: the last 10%% (val), the first 90%% (train), or all")
    e.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32, metavar="N",
                   help="windows of block_size tokens per forward pass")
    e.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to run")
    e.add_argument("--quiet", action="store_true", help="no progress bar")

    k = sub.add_parser("tokenizer", help="train a BPE tokenizer, or show how one splits a text")
    ksub = k.add_subparsers(dest="tokenizer_command", parser_class=_Parser, metavar="{train,encode}")
    kt = ksub.add_parser("train", help="learn a byte-level BPE vocabulary from text files")
    kt.add_argument("--data", required=True, metavar="PATH", help="UTF-8 text file or folder")
    kt.add_argument("--vocab-size", "--vocab_size", dest="vocab_size", type=int, default=4096, metavar="N",
                    help="tokens in all: 256 bytes, the merges, the special tokens")
    kt.add_argument("--pattern", default="gpt4", metavar="NAME|REGEX",
                    help="pre-tokenizer: gpt2, gpt4 (cl100k), digits (every digit alone, as SmolLM), none, or a regex")
    kt.add_argument("--special", action="append", metavar="TOKEN",
                    help="a special token (repeat for more; default: <|endoftext|>)")
    kt.add_argument("--out", required=True, metavar="PATH",
                    help="*.json: HF tokenizer.json; *.tiktoken: tiktoken ranks; a folder: GPT-2 vocab.json + merges.txt")
    kt.add_argument("--quiet", action="store_true", help="no progress bar")
    ke = ksub.add_parser("encode", help="show the tokens of a text, bracketed, and their ids")
    ke.add_argument("--tokenizer", required=True, metavar="PATH",
                    help="a tokenizer file or folder (any format `tokenizer train` writes, HF tokenizer.json, .gguf)")
    ke.add_argument("text", help="the text to encode")

    i = sub.add_parser("info", help="parameter count, FLOPs per token, memory and config")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", metavar="PATH", help="a checkpoint folder (or its ckpt.npz)")
    src.add_argument("--preset", choices=tuple(PRESETS), help="a preset's model")
    i.add_argument("--vocab-size", "--vocab_size", dest="vocab_size", type=int, default=None, metavar="N",
                   help="vocabulary size for --preset (default: the preset's own, else 257: 256 bytes + 1 special)")
    return p


# ---- commands --------------------------------------------------------------------------------

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


def _compile_notice(device: str) -> None:
    """A first run compiles the CPU kernels (about 15 s on 2 cores): say so instead of going quiet."""
    if device != "cpu" or backend.kernel_mode() != "fast":
        return
    from .kernels.cpu import _jit
    backend.fast_table("cpu")  # imports (not compiles) every kernel
    if not _jit.cache_is_warm():
        print(f"compiling the CPU kernels: first run only, about 15 s (cached in {_jit.cache_folder()})",
              file=sys.stderr, flush=True)


def cmd_train(args) -> int:
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
    trainer = Trainer(tcfg, mcfg, resume=args.resume, overwrite=args.overwrite, log=lambda s: print(s, flush=True))
    m = trainer.model
    d = trainer.data
    print(f"data: {d.source}, {d.num_tokens:,} tokens ({len(d.train):,} train / {len(d.val):,} val), "
          f"vocab {trainer.tokenizer.vocab_size}; model: {m.num_params() / 1e6:.2f}M parameters", flush=True)
    _compile_notice(tcfg.device)
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
    if tcfg.sample_tokens:
        tok = trainer.tokenizer
        print("sample:")
        m.eval()  # no dropout while sampling
        _stream(m, tok, _prompt_ids(tok, ""), tcfg.sample_tokens, 0.8, 200, None, tcfg.seed)
    print(f"checkpoint: {trainer.out / 'ckpt.npz'}")
    return 0


def _load_model(path, device):
    from .tokenizers import tokenizer_from_dict
    ck = load_checkpoint(path)
    try:
        cfg = GPTConfig.from_dict(ck["meta"]["model_config"])
        model = GPT(cfg)
        model.load_state_dict(ck["model"])
        tok = tokenizer_from_dict(ck["meta"]["tokenizer"])
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"incompatible checkpoint {ck['path']}: {e}") from None
    if tok.vocab_size > cfg.vocab_size:
        raise CheckpointError(f"incompatible checkpoint {ck['path']}: tokenizer has {tok.vocab_size} tokens "
                              f"but the model only {cfg.vocab_size}")
    return model.to(device).eval(), tok, ck


def _prompt_ids(tok, prompt: str) -> list[int]:
    if prompt:
        return list(tok.encode(prompt))
    for start in ("\n", " "):  # nanoGPT starts samples from a newline
        try:
            return list(tok.encode(start))
        except ValueError:
            continue
    return [0]


def _stream(model, tok, ids, n, temperature, top_k, top_p, seed):
    """Print tokens as they come. Byte-level ids go through an incremental UTF-8 decoder so a
    character split over several tokens prints once it is complete."""
    out = sys.stdout
    decode_bytes = getattr(tok, "decode_bytes", None)
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace") if decode_bytes else None
    for t in model.stream(np.array(ids), n, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed):
        out.write(dec.decode(decode_bytes([t])) if dec else tok.decode([t]))
        out.flush()
    if dec:
        out.write(dec.decode(b"", final=True))
    out.write("\n")
    out.flush()


def cmd_generate(args) -> int:
    model, tok, _ = _load_model(args.ckpt, args.device)
    ids = _prompt_ids(tok, args.prompt)
    top_k = min(args.top_k, model.config.vocab_size) if args.top_k is not None else None
    check_sampling_args(args.temperature, args.top_k, args.top_p)  # before any output is written
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt:
        sys.stdout.write(args.prompt)
    _stream(model, tok, ids, args.max_new_tokens, args.temperature, top_k, args.top_p, args.seed)
    return 0


def cmd_eval(args) -> int:
    from tqdm import tqdm

    from .data import load_dataset
    from .tensor import no_grad
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}")
    model, tok, _ = _load_model(args.ckpt, args.device)
    data, _ = load_dataset(args.data, tokenizer=tok)
    tokens = {"val": data.val, "train": data.train}.get(args.split)
    if tokens is None:
        tokens = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
    T = model.config.block_size
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < 2:
        raise UsageError(f"the {args.split} split has {len(tokens)} tokens; at least 2 are needed")
    starts = list(range(0, len(tokens) - 1, T))  # non-overlapping windows covering every target once
    total, count = 0.0, 0
    _compile_notice(backend.normalize_device(args.device))
    full = [s for s in starts if s + T + 1 <= len(tokens)]
    rest = [s for s in starts if s + T + 1 > len(tokens)]
    bar = None if args.quiet else tqdm(total=len(full) + len(rest), desc=f"eval {args.split}", unit="window",
                                       file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
    with no_grad():
        for i in range(0, len(full), args.batch_size):
            b = full[i:i + args.batch_size]
            x = np.stack([tokens[s:s + T] for s in b])
            y = np.stack([tokens[s + 1:s + T + 1] for s in b])
            _, loss = model(backend.to_device(x, args.device), backend.to_device(y, args.device))
            total += loss.item() * y.size
            count += y.size
            if bar is not None:
                bar.update(len(b))
        for s in rest:  # the ragged last window
            x, y = tokens[s:len(tokens) - 1][None], tokens[s + 1:][None]
            _, loss = model(backend.to_device(x, args.device), backend.to_device(y, args.device))
            total += loss.item() * y.size
            count += y.size
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    loss = total / count
    n_bytes = _utf8_length(tok, tokens[1:])  # the text of every scored target
    bpb = total / math.log(2) / n_bytes
    print(f"loss {loss:.4f}  perplexity {math.exp(loss):.3f}  bits/byte {bpb:.4f}  "
          f"({count:,} tokens, {n_bytes:,} bytes, split {args.split})")
    return 0


def _utf8_length(tok, ids) -> int:
    """UTF-8 bytes spelled by ``ids``. Bits per byte (total nats / ln 2 / bytes) compares models
    with different tokenizers, where per-token loss does not: a token may be a byte or a word."""
    decode_bytes = getattr(tok, "decode_bytes", None)
    if decode_bytes is not None:
        return len(decode_bytes(ids))
    return len(tok.decode(ids).encode("utf-8", "surrogatepass"))


def cmd_info(args) -> int:
    batch = None
    if args.ckpt:
        ck = load_checkpoint(args.ckpt)
        cfg = GPTConfig.from_dict(ck["meta"]["model_config"])
        batch = ck["meta"].get("train_config", {}).get("batch_size")
        source = str(ck["path"])
    else:
        p = get_preset(args.preset)
        cfg = GPTConfig(**{"vocab_size": 257, **p["model"], **({"vocab_size": args.vocab_size} if args.vocab_size else {})})
        batch = p["train"]["batch_size"]
        source = f"preset {args.preset}: {p['about']}"
    from .tensor import no_grad
    with no_grad():
        model = GPT(cfg)
    n_all, n = model.num_parameters(), model.num_params()
    C, L, T, H = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.n_head
    # activations kept for backward, float32: about T*C*(34 + 5*H*T/C) values... per layer and sequence
    # (Korthikanti et al. 2022, counted in 2-byte units; doubled for float32)
    act = (batch or 1) * L * T * C * (34 + 5 * H * T / C) * 2
    print(f"source: {source}")
    print(f"parameters: {n_all:,} ({n:,} excluding position embeddings)")
    print(f"FLOPs per token (training, fwd+bwd): {model.flops_per_token():,}")
    print(f"memory, float32: weights {n_all * 4 / 2**20:.1f} MiB; weights+grads+AdamW moments "
          f"{n_all * 16 / 2**20:.1f} MiB; activations for batch {batch or 1} ~{act / 2**20:.0f} MiB (estimate)")
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    return 0


def cmd_tokenizer(args) -> int:
    import time

    from .data import read_corpus
    from .tokenizers import BPETokenizer, load_tokenizer
    from .tokenizers.formats import save_tokenizer
    if args.tokenizer_command == "train":
        corpus = read_corpus(args.data)
        t0 = time.perf_counter()
        tok = BPETokenizer.train(corpus.text, args.vocab_size, pattern=args.pattern,
                                 special_tokens=args.special or ("<|endoftext|>",), progress=not args.quiet)
        seconds = time.perf_counter() - t0
        save_tokenizer(tok, args.out)
        n_bytes = len(corpus.text.encode("utf-8", "surrogatepass"))
        n_tokens = len(tok.encode(corpus.text, allowed_special="none"))
        print(f"trained a BPE of {tok.vocab_size:,} tokens (pattern {tok.pattern_name or 'custom'}) on "
              f"{n_bytes:,} bytes of {corpus.name} in {seconds:.1f} s; it encodes them as {n_tokens:,} tokens "
              f"({n_bytes / max(n_tokens, 1):.2f} bytes per token); saved to {args.out}")
        return 0
    if args.tokenizer_command == "encode":
        tok = load_tokenizer(args.tokenizer)
        ids = tok.encode(args.text, allowed_special="all") if isinstance(tok, BPETokenizer) else tok.encode(args.text)
        print("".join(f"[{_piece(tok, i)}]" for i in ids))
        print(" ".join(map(str, ids)))
        print(f"{len(ids)} tokens, {len(args.text.encode('utf-8', 'surrogatepass'))} bytes")
        return 0
    raise UsageError("choose a tokenizer command: train, encode")


def _piece(tok, i: int) -> str:
    """How token ``i`` reads: its text, or <xx xx> for bytes that are not whole UTF-8 characters."""
    raw = tok.id_to_bytes(i) if hasattr(tok, "id_to_bytes") else tok.decode([i]).encode("utf-8", "surrogatepass")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "<" + " ".join(f"{b:02x}" for b in raw) + ">"


COMMANDS = {"train": cmd_train, "generate": cmd_generate, "eval": cmd_eval, "tokenizer": cmd_tokenizer,
            "info": cmd_info}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        argv = ["train"]  # the main job: the tiny preset on the built-in corpus
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            raise UsageError(f"choose a command: {', '.join(COMMANDS)}")
        return COMMANDS[args.command](args)
    except UnknownCharactersError as e:
        print(f"{PROG}: error: {_one_line(e)}; a character-level model knows only the characters of its "
              f"training text: leave these out, or train with --tokenizer byte (any text)", file=sys.stderr)
        return 2
    except (UsageError, ValueError, CheckpointError, FileNotFoundError, FileExistsError, IsADirectoryError,
            NotADirectoryError, PermissionError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except TrainingError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if "cuda" in str(e).lower() or "CuPy" in str(e):
            print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `tinygrad-lm generate ... | head`: the reader has gone, say nothing
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141  # 128 + SIGPIPE, as a shell reports it


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
