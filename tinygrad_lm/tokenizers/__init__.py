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
    characters); ``"byte"`` ignores it and takes ``special_tokens=[...]`` as a keyword."""
    if kind == "char":
        if text is None:
            raise ValueError("a char tokenizer is built from a text: make_tokenizer('char', text)")
        return CharTokenizer.from_text(text, **kwargs)
    if kind == "byte":
        return ByteTokenizer(**kwargs)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_dict()`` output (e.g. stored in a checkpoint)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind not in TOKENIZERS:
        raise ValueError(f"not a tokenizer description (kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)})")
    return TOKENIZERS[kind].from_dict(d)


def load_tokenizer(path) -> Tokenizer:
    """Read a tokenizer saved with ``Tokenizer.save``. FileNotFoundError if the file is
    missing; ValueError (naming the path) if it is not a saved tokenizer."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        return tokenizer_from_dict(d)
    except FileNotFoundError:
        raise FileNotFoundError(f"tokenizer file not found: {path}") from None
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path}: not a valid tokenizer file ({e})") from e


__all__ = ["Tokenizer", "CharTokenizer", "ByteTokenizer", "BPETokenizer", "UnknownCharactersError", "make_tokenizer",
           "load_tokenizer", "tokenizer_from_dict", "token_dtype", "TOKENIZER_KINDS", "DEFAULT_SPECIAL_TOKENS"]
