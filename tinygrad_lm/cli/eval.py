"""`tinygrad-lm eval`: loss, perplexity and bits per byte of checkpoints or pretrained models on a text.

Sliding-window perplexity, as Hugging Face's perplexity guide computes it: windows of `context`
tokens start every `stride` tokens; each window scores only the targets the previous one did not,
so every token is scored exactly once, with at least context - stride tokens of history (all it
has, near the start). stride = context gives disjoint windows (fast, less history per token)."""
from __future__ import annotations

import json
import math
import sys

import numpy as np

from .. import backend
from .common import UsageError, add_adapter_args, add_model_args, compile_notice, load_source


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="loss, perplexity and bits per byte of checkpoints or pretrained models")
    add_model_args(e, "score", many=True)
    e.add_argument("--data", default=None, metavar="PATH", help="text file or folder (default: the built-in corpus)")
    e.add_argument("--split", choices=("val", "train", "all"), default=None,
                   help="which part of the text: the last 10%% (val), the first 90%% (train), or all "
                        "(default: val for --ckpt, all for --model)")
    e.add_argument("--context", type=int, default=None, metavar="N",
                   help="tokens per window (default: the model's block size, at most 1024)")
    e.add_argument("--stride", type=int, default=None, metavar="N",
                   help="tokens between window starts (default: context for --ckpt, context/2 for --model)")
    e.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=8, metavar="N",
                   help="windows per forward pass")
    e.add_argument("--json", action="store_true", help="one JSON object per model: model, tokens, loss, ppl, bpb")
    e.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to run")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    add_adapter_args(e)   # with --quantize, each model is scored as it is and quantized: the cost in one table
    e.add_argument("--task", choices=("builtin",), default=None,
                   help="instead of perplexity: exact-match accuracy per family on the built-in instruction task's "
                        "test prompts (greedy replies through the chat template)")
    e.add_argument("--task-size", "--task_size", dest="task_size", type=int, default=100, metavar="N",
                   help="test prompts with --task (balanced over the five families)")


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, first scored target) of each window over n tokens: inputs tokens[start:end],
    targets tokens[start+1:end+1], of which those at positions >= first are scored."""
    out, scored_to = [], 0   # targets 1..scored_to are scored already
    for start in range(0, n - 1, stride):
        end = min(start + context, n - 1)
        out.append((start, end, max(scored_to, start)))
        scored_to = end
        if end == n - 1:
            break
    return out


def perplexity(model, tokens: np.ndarray, context: int, stride: int, batch_size: int, device, bar=None) -> tuple[float, int]:
    """(summed cross-entropy in nats, tokens scored) over every target of tokens[1:]."""
    from ..tensor import no_grad
    total, count = 0.0, 0
    todo = windows(len(tokens), context, stride)
    with no_grad():
        # windows of one length go together; the last (shorter) one on its own
        for i in range(0, len(todo), batch_size):
            group = todo[i:i + batch_size]
            for same in ([w for w in group if w[1] - w[0] == context], [w for w in group if w[1] - w[0] != context]):
                if not same:
                    continue
                x = np.stack([tokens[s:e] for s, e, _ in same])
                y = np.stack([np.where(np.arange(s + 1, e + 1) > f, tokens[s + 1:e + 1], -1) for s, e, f in same])
                scored = int((y >= 0).sum())
                _, loss = model(backend.to_device(x, device), backend.to_device(y, device))
                total += loss.item() * scored
                count += scored
            if bar is not None:
                bar.update(len(group))
    return total, count


def run(args) -> int:
    from tqdm import tqdm

    from ..data import load_dataset
    for name in ("batch_size", "context", "stride"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    pretrained = args.model is not None
    sources = [(None, m) for m in args.model] if pretrained else [(c, None) for c in args.ckpt]
    split = args.split or ("all" if pretrained else "val")
    if args.quantize:  # each model as it is, then quantized: the perplexity cost of quantizing, side by side
        sources = [(c, m, q) for c, m in sources for q in (None, args.quantize)]
    else:
        sources = [(c, m, None) for c, m in sources]
    if args.task:
        return _task_table(args, sources)
    rows = []
    for ckpt, name, quantize in sources:
        model, tok = load_source(ckpt, name, args.device, args.adapter, quantize)
        data, _ = load_dataset(args.data, tokenizer=tok)
        tokens = {"val": data.val, "train": data.train}.get(split)
        if tokens is None:
            tokens = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) < 2:
            raise UsageError(f"the {split} split has {len(tokens)} tokens; at least 2 are needed")
        block = model.config.block_size
        context = args.context or (min(block, 1024) if pretrained else block)
        if context > block:
            raise UsageError(f"--context {context} is longer than the model's block size {block}")
        stride = args.stride or (max(1, context // 2) if pretrained else context)
        if stride > context:
            raise UsageError(f"--stride {stride} is longer than --context {context}: tokens would go unscored")
        compile_notice(backend.normalize_device(args.device))
        label = (name if pretrained else ckpt) + (" +adapter" if args.adapter else "") + (f" ({quantize})" if quantize else "")
        bar = None if args.quiet else tqdm(total=len(windows(len(tokens), context, stride)), desc=f"eval {split}: {label}",
                                           unit="window", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        total, count = perplexity(model, tokens, context, stride, args.batch_size, args.device, bar)
        if bar is not None:
            bar.close()
        n_bytes = _utf8_length(tok, tokens[1:])  # the text of every scored target
        rows.append({"model": label, "tokens": count, "loss": total / count, "ppl": math.exp(total / count),
                     "bpb": total / math.log(2) / n_bytes, "bytes": n_bytes, "split": split,
                     "context": context, "stride": stride})
        if args.json:
            print(json.dumps({k: rows[-1][k] for k in ("model", "tokens", "loss", "ppl", "bpb")}), flush=True)
        del model
    if not args.json:
        _table(rows)
    return 0


def _task_table(args, sources) -> int:
    """Exact match per family of each model on the same test prompts."""
    from ..align.tasks import FAMILIES, task_split
    if args.task_size < 1:
        raise UsageError(f"--task-size must be a positive integer, got {args.task_size}")
    examples = task_split("test", args.task_size)
    rows = []
    for ckpt, name, quantize in sources:
        from ..align.evaluate import task_accuracy
        model, tok = load_source(ckpt, name, args.device, args.adapter, quantize)
        label = (name or ckpt) + (" +adapter" if args.adapter else "") + (f" ({quantize})" if quantize else "")
        compile_notice(backend.normalize_device(args.device))
        scores = task_accuracy(model, tok, examples, log=None if args.quiet else lambda m: print(m, file=sys.stderr))
        rows.append({"model": label, **scores})
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if not args.json:
        width = max(len("model"), *(len(r["model"]) for r in rows))
        print(f"{'model':<{width}}  " + "  ".join(f"{f:>9}" for f in FAMILIES) + f"  {'all':>6}")
        for r in rows:
            print(f"{r['model']:<{width}}  " + "  ".join(f"{r.get(f, 0):>9.0%}" for f in FAMILIES) + f"  {r['all']:>6.1%}")
        print(f"(exact match, greedy, on {len(examples)} test prompts of the built-in task)")
    return 0


def _table(rows) -> None:
    width = max(len("model"), *(len(str(r["model"])) for r in rows))
    print(f"{'model':<{width}}  {'tokens':>10}  {'loss':>7}  {'perplexity':>10}  {'bits/byte':>9}")
    for r in rows:
        print(f"{r['model']:<{width}}  {r['tokens']:>10,}  {r['loss']:>7.4f}  {r['ppl']:>10.3f}  {r['bpb']:>9.4f}")
    r = rows[0]
    print(f"(split {r['split']}, {r['bytes']:,} bytes; windows of {r['context']} tokens every {r['stride']})")


def _utf8_length(tok, ids) -> int:
    """UTF-8 bytes spelled by ``ids``. Bits per byte (total nats / ln 2 / bytes) compares models
    with different tokenizers, where per-token loss does not: a token may be a byte or a word."""
    decode_bytes = getattr(tok, "decode_bytes", None)
    if decode_bytes is not None:
        return len(decode_bytes(ids))
    return len(tok.decode(ids).encode("utf-8", "surrogatepass"))
