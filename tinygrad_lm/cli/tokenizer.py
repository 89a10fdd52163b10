"""`tinygrad-lm tokenizer train|encode`: learn a byte-level BPE, or show how a tokenizer splits a text."""
from __future__ import annotations

from .common import Parser, UsageError


def add_parser(sub) -> None:
    k = sub.add_parser("tokenizer", help="train a BPE tokenizer, or show how one splits a text")
    ksub = k.add_subparsers(dest="tokenizer_command", parser_class=Parser, metavar="{train,encode}")
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


def run(args) -> int:
    import time

    from ..data import read_corpus
    from ..tokenizers import BPETokenizer, load_tokenizer
    from ..tokenizers.formats import save_tokenizer
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
