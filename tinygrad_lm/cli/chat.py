"""`tinygrad-lm chat`: talk with a chat model, its template rendered as transformers renders it,
the KV cache kept across turns. --message answers once and prints only the reply (for scripts)."""
from __future__ import annotations

import sys

from .common import UsageError, add_adapter_args, add_model_args, add_sampling_args, compile_notice, load_source


def add_parser(sub) -> None:
    c = sub.add_parser("chat", help="a conversation with a chat model (multi-turn, streamed)")
    add_model_args(c, "talk with")
    c.add_argument("--system", default=None, metavar="TEXT", help="a system message that opens the conversation")
    c.add_argument("--message", default=None, metavar="TEXT",
                   help="answer this one message, print only the reply, and exit")
    c.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=512, metavar="N",
                   help="longest reply, in tokens")
    add_sampling_args(c, temperature=0.0, top_k=None)   # greedy: the same reply every time
    add_adapter_args(c)


def run(args) -> int:
    from ..chat import ChatSession
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    model, tok = load_source(args.ckpt, args.model, args.device, args.adapter, args.quantize)
    if not hasattr(tok, "decode_bytes") or not getattr(tok, "special_tokens", None):
        raise UsageError(f"chat needs a BPE tokenizer with special tokens (a chat model's); this model has a "
                         f"{type(tok).__name__}: use `generate`")
    session = ChatSession(model, tok, args.system, max_new_tokens=args.max_new_tokens,
                          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    compile_notice(args.device)
    if args.message is not None:
        _answer(session, args.message)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {args.model or args.ckpt} (Ctrl-D to end, /reset to start over)", file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        if not line.strip():
            continue
        if line.strip() == "/reset":
            session.reset()
            continue
        _answer(session, line)


def _answer(session, text: str) -> None:
    for piece in session.send(text):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
