"""Character-level tokenizer: one id per Unicode code point seen in the training text.

Like nanoGPT's shakespeare_char, the vocabulary is the sorted set of characters of
the corpus, so id order is code-point order. Encoding text with a character that
was never seen is an error (there is no <unk> token): silently mapping it to
something else would make a model's loss and samples quietly wrong.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .base import FORMAT_VERSION, Tokenizer, as_id_array


class UnknownCharactersError(ValueError):
    """Text contains characters outside a CharTokenizer's vocabulary.

    ``.chars`` holds them, sorted; the message lists their reprs, e.g.
    ``characters not in the vocabulary: 'é', '😀'``.
    """

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        super().__init__("characters not in the vocabulary: " + ", ".join(repr(c) for c in self.chars))


def _code_points(text: str) -> np.ndarray:
    # UTF-32 is one fixed-width word per code point, so this is str -> uint32 array in C.
    # 'surrogatepass' lets lone surrogates (legal in a Python str) through as themselves.
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class CharTokenizer(Tokenizer):
    """Maps each character of ``chars`` to its position in that sequence.

    Build one from a corpus with ``CharTokenizer.from_text(text)`` (sorted unique
    characters). The constructor keeps the order it is given, so a saved vocabulary
    always reloads with the same ids.
    """

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"a character vocabulary holds single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("the character vocabulary has duplicates")
        if not chars:
            raise ValueError("the character vocabulary is empty")
        self.chars = chars
        self._codes = _code_points("".join(chars))  # id -> code point
        # Sorted code points + where each sits in the vocabulary: encode is a binary
        # search per character (np.searchsorted), no Python loop over the text.
        self._order = np.argsort(self._codes, kind="stable")
        self._sorted_codes = self._codes[self._order]

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """The vocabulary of ``text``: its unique characters in sorted (code-point) order."""
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str, dtype=np.int64) -> np.ndarray:
        """Text -> ids. Raises UnknownCharactersError naming every unseen character."""
        cps = _code_points(text)
        pos = np.searchsorted(self._sorted_codes, cps)
        pos = np.minimum(pos, len(self._sorted_codes) - 1)  # past-the-end -> a certain mismatch
        unknown = self._sorted_codes[pos] != cps
        if unknown.any():
            raise UnknownCharactersError(chr(c) for c in np.unique(cps[unknown]).tolist())
        return self._order[pos].astype(dtype, copy=False)

    def decode(self, ids) -> str:
        """Ids -> text. Raises ValueError for an id outside the vocabulary."""
        arr = as_id_array(ids, self.vocab_size)
        return self._codes[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": FORMAT_VERSION, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        return cls(d["chars"])
