"""What every tokenizer shares: the interface, JSON save/load, fingerprints, id checks.

A tokenizer turns text into integer ids and back. It is fully described by a small
JSON-able dict (``to_dict``), which is what ``save`` writes, what checkpoints can
embed, and what ``fingerprint`` hashes to key the token caches in ``data.py``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1  # bump if the meaning of a saved tokenizer dict ever changes


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a vocabulary: uint16 up to
    65,536 entries (ids 0..65535, like nanoGPT's .bin files), uint32 above."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def canonical_json(obj) -> str:
    """One spelling per dict: sorted keys, no spaces, ASCII escapes (lone surrogates
    and all). Hashing this is stable across runs, machines and Python versions."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def as_id_array(ids, vocab_size: int) -> np.ndarray:
    """Check a sequence of token ids (list or 1-D integer array) and return it as int64.

    Raises ValueError for ids outside [0, vocab_size): a negative id would otherwise
    silently wrap around in Python/NumPy indexing and decode to the wrong character.
    """
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)  # np.asarray([]) is float64; empty is fine
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be a 1-D sequence of integers, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
        raise ValueError(f"token ids out of range [0, {vocab_size}): {sorted(set(bad.tolist()))[:10]}")
    return arr


def check_special_tokens(special_tokens) -> list[str]:
    """The special tokens as a list; ValueError unless they are distinct non-empty strings."""
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
    if len(set(specials)) != len(specials):
        raise ValueError(f"duplicate special tokens: {specials}")
    return specials


class Tokenizer:
    """Base class. Subclasses set ``kind`` and implement the methods below."""

    kind: str = ""

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Text -> list of token ids."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str, dtype=np.int64) -> np.ndarray:
        """Text -> 1-D NumPy array of ids (vectorised; what the data pipeline uses)."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Ids (list or 1-D integer array) -> text."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """Everything needed to rebuild this tokenizer, as JSON-able data."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Stable identifier, e.g. ``"char-3f2a9c0d1b7e4a65"``: the kind plus a hash of
        the full vocabulary. Two tokenizers with equal fingerprints map text to the
        same ids, so it is safe to use in cache keys."""
        digest = hashlib.sha256(canonical_json(self.to_dict()).encode("ascii")).hexdigest()
        return f"{self.kind}-{digest[:16]}"

    def save(self, path) -> None:
        """Write the tokenizer as a JSON file (ASCII-escaped, so any character survives)."""
        text = json.dumps(self.to_dict(), ensure_ascii=True, indent=1)
        Path(path).write_text(text + "\n", encoding="ascii")

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, fingerprint={self.fingerprint()!r})"
