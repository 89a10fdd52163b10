"""Byte-level tokenizer: ids 0..255 are the UTF-8 bytes of the text, then special tokens.

It has no out-of-vocabulary failure: every string is some sequence of bytes.

Text -> bytes. ``encode`` uses UTF-8 with ``errors="surrogatepass"``, so even a
Python str holding lone surrogates (e.g. from ``os.fsdecode`` of a bad file name)
encodes without error, to the 3-byte sequence those code points would have.

Bytes -> text. A model can emit any byte sequence, not only valid UTF-8, so
``decode`` uses ``errors="replace"`` by default: invalid bytes become U+FFFD and the
result is always printable. Hence:

* ``decode(encode(s)) == s`` for every str without lone surrogates (every text
  read from a UTF-8 file);
* ``decode(encode(s), errors="surrogatepass") == s`` for every str whatsoever;
* ``decode(ids)`` never fails for in-range ids. Decode whole sequences, not one
  token at a time: a multi-byte character split across calls turns into U+FFFDs
  (``decode_bytes`` gives the raw bytes for incremental printing).

Special tokens (default ``["<|endoftext|>"]``) take ids 256, 257, ... in list order.
``encode(text)`` treats their spelling in text as ordinary characters (safe: text
from a file can never inject a control token). ``encode(text, allowed_special=...)``
with ``"all"`` or a collection of special-token strings turns those occurrences
into their ids instead; longest match first, left to right.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Sequence

import numpy as np

from .base import FORMAT_VERSION, Tokenizer, as_id_array, check_special_tokens

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)
NUM_BYTES = 256


class ByteTokenizer(Tokenizer):
    """256 byte ids followed by ``special_tokens`` (ids 256, 257, ...)."""

    kind = "byte"

    def __init__(self, special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS):
        special_tokens = check_special_tokens(special_tokens)
        self.special_tokens = special_tokens
        self.special_ids = {s: NUM_BYTES + i for i, s in enumerate(special_tokens)}

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES + len(self.special_tokens)

    def token_id(self, special: str) -> int:
        """The id of a special token, e.g. ``token_id("<|endoftext|>") == 256``."""
        try:
            return self.special_ids[special]
        except KeyError:
            raise ValueError(f"{special!r} is not a special token of this tokenizer "
                             f"(it has {self.special_tokens})") from None

    def _allowed(self, allowed_special) -> list[str]:
        if allowed_special == "all":
            return list(self.special_tokens)
        if isinstance(allowed_special, str):  # a bare str would iterate per character
            raise ValueError('allowed_special must be "all" or a collection of special tokens, '
                             f"got the string {allowed_special!r}")
        unknown = sorted(set(allowed_special) - set(self.special_ids))
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {unknown} (it has {self.special_tokens})")
        return list(allowed_special)

    def encode(self, text: str, allowed_special: Collection[str] | str = ()) -> list[int]:
        """Text -> ids (see the module docstring for ``allowed_special``)."""
        return self.encode_array(text, allowed_special=allowed_special).tolist()

    def encode_array(self, text: str, dtype=np.int64, allowed_special: Collection[str] | str = ()) -> np.ndarray:
        allowed = self._allowed(allowed_special)
        if not allowed:
            return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8).astype(dtype)
        # Longest first, so that with "<|a|>" and "<|a|>x" both allowed the longer one wins.
        pattern = re.compile("|".join(re.escape(s) for s in sorted(allowed, key=len, reverse=True)))
        pieces, start = [], 0
        for m in pattern.finditer(text):
            pieces.append(np.frombuffer(text[start:m.start()].encode("utf-8", "surrogatepass"), dtype=np.uint8))
            pieces.append(np.array([self.special_ids[m.group()]]))
            start = m.end()
        pieces.append(np.frombuffer(text[start:].encode("utf-8", "surrogatepass"), dtype=np.uint8))
        return np.concatenate([p.astype(dtype) for p in pieces])

    def decode_bytes(self, ids) -> bytes:
        """Ids -> raw bytes, special tokens spelled out in UTF-8 (for streaming output)."""
        arr = as_id_array(ids, self.vocab_size)
        out, start = [], 0
        for i in np.flatnonzero(arr >= NUM_BYTES).tolist():
            out.append(arr[start:i].astype(np.uint8).tobytes())
            out.append(self.special_tokens[arr[i] - NUM_BYTES].encode("utf-8", "surrogatepass"))
            start = i + 1
        out.append(arr[start:].astype(np.uint8).tobytes())
        return b"".join(out)

    def decode(self, ids, errors: str = "replace") -> str:
        """Ids -> text; ``errors`` is the UTF-8 error handler for invalid byte runs."""
        arr = as_id_array(ids, self.vocab_size)
        out, start = [], 0
        # Decode the byte runs between special tokens separately, so a special token
        # never merges with a dangling partial character next to it.
        for i in np.flatnonzero(arr >= NUM_BYTES).tolist():
            out.append(arr[start:i].astype(np.uint8).tobytes().decode("utf-8", errors))
            out.append(self.special_tokens[arr[i] - NUM_BYTES])
            start = i + 1
        out.append(arr[start:].astype(np.uint8).tobytes().decode("utf-8", errors))
        return "".join(out)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": FORMAT_VERSION, "special_tokens": self.special_tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "ByteTokenizer":
        return cls(d["special_tokens"])
