"""`tinygrad-lm eval`: loss, perplexity and bits per byte of a checkpoint on a text."""
from __future__ import annotations

import math
import sys

import numpy as np

from .. import backend
from .common import UsageError, compile_notice, load_model


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="loss and perplexity of a checkpoint on a text")
    e.add_argument("--ckpt", required=True, metavar="PATH", help="checkpoint folder (or its ckpt.npz)")
    e.add_argument("--data", default=None, metavar="PATH", help="text file or folder (default: the built-in corpus)")
    e.add_argument("--split", choices=("val", "train", "all"), default="val",
                   help="which part of the text: the last 10%% (val), the first 90%% (train), or all")
    e.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=32, metavar="N",
                   help="windows of block_size tokens per forward pass")
    e.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to run")
    e.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from tqdm import tqdm

    from ..data import load_dataset
    from ..tensor import no_grad
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be a positive integer, got {args.batch_size}")
    model, tok, _ = load_model(args.ckpt, args.device)
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
    compile_notice(backend.normalize_device(args.device))
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
