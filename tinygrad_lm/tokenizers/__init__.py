"""Tokenizers: text <-> integer ids.

Two kinds, chosen by name:

* ``"char"``: one id per character seen in a corpus (nanoGPT's shakespeare_char).
* ``"byte"``: the 256 UTF-8 byte values plus special tokens such as
  ``<|endoftext|>`` (id 256); never fails on any input.

    tok = make_tokenizer("char", text)
    ids = tok.encode("hello")        # list[int]
    tok.decode(ids)                  # "hello"
    tok.save("tok.json"); load_tokenizer("tok.json") == tok
    tok.fingerprint()                # "char-<16 hex>", for cache keys
"""
from __future__ import annotations

import json
from pathlib import Path

from .base import Tokenizer, token_dtype
from .bpe import BPETokenizer
from .byte import DEFAULT_SPECIAL_TOKENS, ByteTokenizer
from .char import CharTokenizer, UnknownCharactersError

TOKENIZERS = {"char": CharTokenizer, "byte": ByteTokenizer, "bpe": BPETokenizer}
TOKENIZER_KINDS = tuple(TOKENIZERS)


def make_tokenizer(kind: str, text: str | None = None, **kwargs) -> Tokenizer:
    """Build a tokenizer by kind. ``"char"`` needs ``text`` (its vocabulary is the text's
    characters); ``"byte"`` ignores it and takes ``special_tokens=[...]`` as a keyword;
    ``"bpe"`` is trained on ``text`` (keywords of BPETokenizer.train: vocab_size, pattern, ...)."""
    if kind in ("char", "bpe") and text is None:
        raise ValueError(f"a {kind} tokenizer is built from a text: make_tokenizer({kind!r}, text)")
    if kind == "char":
        return CharTokenizer.from_text(text, **kwargs)
    if kind == "byte":
        return ByteTokenizer(**kwargs)
    if kind == "bpe":
        return BPETokenizer.train(text, **{"progress": False, **kwargs})
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_dict()`` output (e.g. stored in a checkpoint)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in TOKENIZERS:
        raise ValueError(f"not a tokenizer description (kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)})")
    return TOKENIZERS[kind].from_dict(d)


def load_tokenizer(path) -> Tokenizer:
    """Read a tokenizer file, whatever its format:

    * our own JSON (``Tokenizer.save`` of a char/byte/bpe tokenizer, ``{"kind": ...}``);
    * an HF ``tokenizer.json`` (byte-level BPE);
    * a ``*.tiktoken`` ranks file, with its ``*.tiktoken.json`` sidecar (pattern, specials);
    * a folder with GPT-2's ``vocab.json`` + ``merges.txt`` (+ our ``bpe.json``), or ``tokenizer.json``;
    * a ``.gguf`` model file (its byte-level BPE tokenizer).

    FileNotFoundError if nothing is there; one ValueError naming the path and what was expected
    for anything else (another format, corrupt or truncated, a tokenizer we cannot reproduce).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    # Each format's module loads only when a file of its kind is read (gguf is slow to import).
    if path.is_dir():
        from .formats import load_folder
        return load_folder(path)
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"GGUF" or path.suffix.lower() == ".gguf":
        from .gguf_file import load_gguf_tokenizer
        return load_gguf_tokenizer(path)
    if path.suffix.lower() == ".tiktoken":
        from .tiktoken_file import load_tiktoken
        return load_tiktoken(path)
    what = "a tokenizer file (our JSON, HF tokenizer.json, *.tiktoken, a GPT-2 folder or *.gguf)"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not {what} (not valid UTF-8 JSON: {e})") from None
    if isinstance(d, dict) and "kind" in d:
        try:
            return tokenizer_from_dict(d)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a valid tokenizer file ({e})") from e
    from .formats import SIDECAR_FORMAT, bpe_from_hf_dict, is_hf_dict
    if is_hf_dict(d):
        return bpe_from_hf_dict(d, path)
    if isinstance(d, dict) and d.get("format") == SIDECAR_FORMAT:
        raise ValueError(f"{path}: this is the pattern/specials sidecar of a .tiktoken file or folder; load that instead")
    raise ValueError(f"{path}: not {what}: JSON without \"kind\" or \"model\"")


__all__ = ["Tokenizer", "CharTokenizer", "ByteTokenizer", "BPETokenizer", "UnknownCharactersError", "make_tokenizer",
           "load_tokenizer", "tokenizer_from_dict", "token_dtype", "TOKENIZER_KINDS", "DEFAULT_SPECIAL_TOKENS"]
