"""`tinygrad-lm generate`: stream a continuation of a prompt from a checkpoint."""
from __future__ import annotations

import sys

from ..sampling import check_sampling_args
from .common import UsageError, add_adapter_args, add_model_args, add_sampling_args, load_source, prompt_ids, stream


def add_parser(sub) -> None:
    g = sub.add_parser("generate", help="stream text from a checkpoint or a pretrained model")
    add_model_args(g, "continue the prompt with")
    g.add_argument("--prompt", default="", help="text to continue (default: a newline)")
    g.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=500,
                   metavar="N", help="tokens to generate")
    add_sampling_args(g, temperature=0.8, top_k=200)
    add_adapter_args(g)


def run(args) -> int:
    model, tok = load_source(args.ckpt, args.model, args.device, args.adapter, args.quantize)
    ids = prompt_ids(tok, args.prompt)
    top_k = min(args.top_k, model.config.vocab_size) if args.top_k is not None else None
    check_sampling_args(args.temperature, args.top_k, args.top_p)  # before any output is written
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if args.prompt:
        sys.stdout.write(args.prompt)
    stream(model, tok, ids, args.max_new_tokens, args.temperature, top_k, args.top_p, args.seed)
    return 0
