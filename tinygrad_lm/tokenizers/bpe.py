"""Byte-level BPE (byte-pair encoding), the tokenizer of GPT-2, GPT-4, Llama 3 and SmolLM2.

A token is a byte string. The vocabulary starts with the 256 single bytes, and every merge
(a, b) adds the token a + b. Encoding text:

1. split it at special tokens (``allowed_special``), which map straight to their ids;
2. cut each piece into chunks with the pre-tokenizer regex (patterns.py), so no token spans
   e.g. a word and the space after it;
3. per chunk, start from its UTF-8 bytes and repeatedly merge the adjacent pair whose merge
   has the lowest rank (the earliest learned; leftmost on a tie) until no listed pair is left.

Step 3 is :func:`bpe_merge_reference` below, in plain Python; the fast path runs the same
algorithm in a Numba kernel (tinygrad_lm.kernels.cpu.bpe), and a chunk cache (chunk -> ids)
makes every later occurrence of a word one lookup. For the named patterns steps 2-3 run in one
kernel call over the text (kernels/cpu/bpe_text.py: a scanner per pattern, the cache a hash
table of that call); for a regex of the user's, the ``regex`` package splits, a dict kept
across calls caches, and the unseen chunks go to the kernel in one batch.

Ids need not follow byte order: GPT-2 and SmolLM2 give single bytes other ids, so ``vocab``
maps each token's bytes to its id and merges name their parts by bytes. Training
(:meth:`BPETokenizer.train`, bpe_train.py) gives ids 0-255 to the bytes in byte order, then one
per merge, then the special tokens.

Decoding joins the tokens' bytes; bytes that are not valid UTF-8 (a model may emit half a
character) become U+FFFD. Text with lone surrogates (possible in a Python str) encodes with
``surrogatepass``, as the byte tokenizer does.
"""
from __future__ import annotations

import base64
from collections.abc import Collection, Iterable
from itertools import chain

import numpy as np

from .base import FORMAT_VERSION, Tokenizer, as_id_array
from .patterns import PATTERNS, blocks, make_splitter, resolve_pattern

CACHE_LIMIT = 1 << 18       # chunks kept in the cache (a few tens of MB); cleared when full
CACHE_MAX_CHUNK = 256       # longer chunks (pattern "none") are not kept: they rarely repeat
ENCODE_BLOCK_CHARS = 1 << 24   # a named pattern encodes longer texts a block at a time (memory)
# kernels/cpu/bpe_text.py's scanner per named pattern (kept here so that no Numba loads to build one)
TEXT_PATTERN_IDS = {"none": 0, "gpt2": 1, "gpt4": 2, "digits": 3, "smollm": 3}
SCANNED_REGEXES = {PATTERNS[name]: i for name, i in TEXT_PATTERN_IDS.items()}


def bpe_merge_reference(ids: list[int], ranks: dict[tuple[int, int], int], merged: list[int]) -> list[int]:
    """The BPE merge loop in plain Python (the kernel's reference, used by tests).

    ``ids``: a chunk's tokens (its bytes' ids); ``ranks``: pair -> rank of its merge;
    ``merged[rank]``: the id that merge makes. Merge the lowest-rank pair, leftmost first,
    until no pair has a merge."""
    ids = list(ids)
    while len(ids) > 1:
        pair_ranks = [ranks.get(pair, len(merged)) for pair in zip(ids, ids[1:])]
        best = min(pair_ranks)
        if best == len(merged):
            break
        i = pair_ranks.index(best)           # leftmost occurrence of the best merge
        ids[i:i + 2] = [merged[best]]
    return ids


def _kernels():
    """The Numba kernels (chunks; whole texts), imported at the first encode: building or
    decoding a tokenizer needs no Numba."""
    from tinygrad_lm.kernels.cpu import bpe, bpe_text
    return bpe, bpe_text


def _latin1(b: bytes) -> str:
    return b.decode("latin-1")              # byte n -> code point n: any bytes, JSON-able, readable


class BPETokenizer(Tokenizer):
    """Byte-level BPE: ``vocab`` (token bytes -> id), ``merges`` in priority order (rank 0
    first; merging a + b gives ``vocab[a + b]``), a pre-tokenizer ``pattern`` (a name from
    patterns.py or a regex string), and ``special_tokens`` (string -> id, ids apart from the
    vocabulary's)."""

    kind = "bpe"

    def __init__(self, vocab: dict[bytes, int], merges: list[tuple[bytes, bytes]], pattern: str = "gpt4",
                 special_tokens: dict[str, int] | None = None):
        self.pattern, self.pattern_name = resolve_pattern(pattern)
        self.vocab = _check_vocab(vocab)
        self.merges = _check_merges(merges, self.vocab)
        self.special_tokens = _check_specials(special_tokens or {}, self.vocab)
        self._vocab_size = 1 + max(chain(self.vocab.values(), self.special_tokens.values()))
        # A pretrained model's conversation format (tokenizers/chat.py renders it) and its
        # begin/end-of-text special tokens; None for tokenizers trained here.
        self.chat_template: str | None = None
        self.bos_token: str | None = None
        self.eos_token: str | None = None
        n_tokens = len(self.vocab) + len(self.special_tokens)
        if self._vocab_size > 2 * n_tokens + 1024:   # a table this long is allocated below
            raise ValueError(f"token ids go up to {self._vocab_size - 1} for only {n_tokens} tokens; ids must be "
                             "(nearly) contiguous")

        # id -> bytes (None where no token has that id) for decoding
        self._id_bytes: list[bytes | None] = [None] * self._vocab_size
        for b, i in self.vocab.items():
            self._id_bytes[i] = b
        for s, i in self.special_tokens.items():
            self._id_bytes[i] = s.encode("utf-8", "surrogatepass")

        # The merges as ids, for the kernel: rank r merges (left[r], right[r]) into merged[r].
        # -1: a byte with no token of its own (SmolLM2 has none for 21 bytes that never occur in
        # UTF-8 text); encoding drops such bytes, as HF tokenizers and llama.cpp do
        self._byte_ids = np.array([self.vocab.get(bytes([i]), -1) for i in range(256)], np.int32)
        self._left = np.array([self.vocab[a] for a, _ in self.merges], np.int32)
        self._right = np.array([self.vocab[b] for _, b in self.merges], np.int32)
        self._merged = np.array([self.vocab[a + b] for a, b in self.merges], np.int32)
        self._table = None         # the kernel's merge table, built at the first encode
        # a named pattern (or its exact regex, as a loaded file may give it): the kernel's scanner;
        # any other regex: the regex package
        self._text_pattern = SCANNED_REGEXES.get(self.pattern)
        self._split = make_splitter(self.pattern, self.pattern_name)
        self._cache: dict[str, tuple[int, ...]] = {}
        self._special_regex = {}   # frozenset of allowed specials -> compiled alternation

    # ---- training ---------------------------------------------------------------------------

    @classmethod
    def train(cls, text_or_paths, vocab_size: int, pattern: str = "gpt4",
              special_tokens: Iterable[str] = ("<|endoftext|>",), progress: bool = True) -> "BPETokenizer":
        """Learn a vocabulary of ``vocab_size`` tokens from a text (str) or from files (a list of
        paths): ids 0-255 are the bytes in byte order, then one id per merge, then the special
        tokens. Deterministic: the same input gives the same merges on every machine (ties go to
        the smallest pair of ids; see bpe_train.py). ``progress`` draws a bar on stderr."""
        from .bpe_train import train_bpe
        return train_bpe(cls, text_or_paths, vocab_size, pattern, special_tokens, progress)

    # ---- sizes and lookups --------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Largest id + 1, over the vocabulary and the special tokens."""
        return self._vocab_size

    def id_to_bytes(self, i: int) -> bytes:
        """The bytes of token ``i`` (a special token's UTF-8 spelling for a special id)."""
        b = self._id_bytes[i] if isinstance(i, (int, np.integer)) and 0 <= i < self._vocab_size else None
        if b is None:
            raise ValueError(f"token id {i!r} is not in this vocabulary (ids 0..{self._vocab_size - 1})")
        return b

    def token_id(self, special: str) -> int:
        """The id of a special token, e.g. ``token_id("<|endoftext|>")``."""
        try:
            return self.special_tokens[special]
        except KeyError:
            raise ValueError(f"{special!r} is not a special token of this tokenizer "
                             f"(it has {sorted(self.special_tokens)})") from None

    # ---- encoding -----------------------------------------------------------------------------

    def encode(self, text: str, allowed_special: Collection[str] | str = "none_raise") -> list[int]:
        """Text -> ids. ``allowed_special`` says what a special token's spelling in the text means:

        * ``"none_raise"`` (default, as tiktoken): a ValueError if the text contains one, so text
          from outside can never slip a control token in unnoticed;
        * ``"all"``: every special spelling becomes its id;
        * a set of special tokens: those become ids, the others still raise;
        * ``"none"``: specials are ordinary text (split and merged like any other)."""
        return self._join(*self._pieces(text, allowed_special)).tolist()

    def encode_array(self, text: str, dtype=np.int64,
                     allowed_special: Collection[str] | str = "none_raise") -> np.ndarray:
        """Text -> 1-D array of ids (what the data pipeline stores)."""
        return self._join(*self._pieces(text, allowed_special)).astype(dtype, copy=False)

    def encode_batch(self, texts: Iterable[str],
                     allowed_special: Collection[str] | str = "none_raise") -> list[list[int]]:
        """``encode`` of each text. With a named pattern and no special token to place, the texts
        go to the kernel in one call and share its chunk cache."""
        split = [self._pieces(t, allowed_special) for t in texts]
        if self._text_pattern is not None and all(not specials for _, specials in split):
            ids, ends = self._encode_named([pieces[0] for pieces, _ in split])
            starts = [0] + ends.tolist()
            return [ids[a:b].tolist() for a, b in zip(starts, starts[1:])]
        return [self._join(pieces, specials).tolist() for pieces, specials in split]

    def _specials_for(self, allowed_special) -> tuple[list[str], list[str]]:
        """(allowed, disallowed) special tokens for an ``allowed_special`` argument."""
        every = list(self.special_tokens)
        if isinstance(allowed_special, str):
            if allowed_special == "all":
                return every, []
            if allowed_special == "none_raise":
                return [], every
            if allowed_special == "none":
                return [], []
            raise ValueError(f"allowed_special must be 'none_raise', 'all', 'none' or a set of special tokens, "
                             f"got the string {allowed_special!r}")
        allowed = set(allowed_special)
        unknown = sorted(allowed - set(every))
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {unknown} (it has {sorted(every)})")
        return [s for s in every if s in allowed], [s for s in every if s not in allowed]

    def _pieces(self, text: str, allowed_special) -> tuple[list[str], list[int]]:
        """The text cut at the allowed special tokens: n + 1 pieces of ordinary text and the n
        special ids between them. Raises if a special token that is not allowed occurs."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        allowed, disallowed = self._specials_for(allowed_special)
        for s in disallowed:
            if s in text:
                raise ValueError(f"the text contains the special token {s!r}; pass allowed_special='all' (or a set "
                                 f"with it) to encode it as its id, or allowed_special='none' to encode it as text")
        allowed = [s for s in allowed if s in text]
        if not allowed:
            return [text], []
        key = frozenset(allowed)
        if key not in self._special_regex:
            import regex
            # longest first: with "<|a|>" and "<|a|>x" both allowed, the longer one wins
            order = sorted(allowed, key=lambda s: (-len(s), s))
            self._special_regex[key] = regex.compile("|".join(regex.escape(s) for s in order))
        pieces, specials, start = [], [], 0
        for m in self._special_regex[key].finditer(text):
            pieces.append(text[start:m.start()])
            specials.append(self.special_tokens[m.group()])
            start = m.end()
        pieces.append(text[start:])
        return pieces, specials

    def _join(self, pieces: list[str], specials: list[int]) -> np.ndarray:
        """Ids of the pieces with the special ids between them."""
        if self._text_pattern is not None:
            ids, ends = self._encode_named(pieces)
        else:
            parts = [self._encode_ordinary(p) for p in pieces]
            ids = np.fromiter(chain.from_iterable(parts), np.int64)
            ends = np.cumsum([len(p) for p in parts])
        if specials:
            ids = np.insert(ids, ends[:-1], specials)   # special k goes right after piece k
        return ids

    def _merge_table(self):
        """(keys, ranks, bits): merge ranks by pair id, built once, at the first encode."""
        if self._table is None:
            kernel = _kernels()[0]
            bits = int(kernel.table_bits(max(len(self.merges), 1)))
            self._table = (*kernel.build_merge_table(self._left, self._right, bits), bits)
        return self._table

    def _encode_named(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """A named pattern: split, cache and merge in kernel calls over the pieces' code points, of
        at most about ENCODE_BLOCK_CHARS each (a long text is cut where the pattern cuts anyway, so
        the ids are the same; memory stays bounded). Returns (ids int32, where each piece's ids end)."""
        if self._text_pattern == 0 or sum(map(len, pieces)) <= ENCODE_BLOCK_CHARS:   # "none" never cuts
            return self._encode_named_once(pieces)
        subs = [(b, k) for k, piece in enumerate(pieces) for b in blocks(piece, ENCODE_BLOCK_CHARS)]
        out, piece_ends, offset, i = [], np.zeros(len(pieces), np.int64), 0, 0
        while i < len(subs):
            j, size = i, 0
            while j < len(subs) and (j == i or size + len(subs[j][0]) <= ENCODE_BLOCK_CHARS):
                size += len(subs[j][0])
                j += 1
            ids, ends = self._encode_named_once([b for b, _ in subs[i:j]])
            for (_, k), end in zip(subs[i:j], ends.tolist()):
                piece_ends[k] = offset + end    # the last block of piece k sets its end
            out.append(ids)
            offset += ids.size
            i = j
        return np.concatenate(out), piece_ends

    def _encode_named_once(self, pieces: list[str]) -> tuple[np.ndarray, np.ndarray]:
        text_kernel = _kernels()[1]
        joined = pieces[0] if len(pieces) == 1 else "".join(pieces)
        cps = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), np.uint32)
        ends = np.cumsum(np.fromiter(map(len, pieces), np.int64, len(pieces)))
        return text_kernel.encode_text(cps, ends, text_kernel.char_classes(), self._text_pattern, self._byte_ids,
                                       *self._merge_table(), self._merged)

    def _encode_ordinary(self, text: str) -> list[int]:
        """A regex of the user's: the ``regex`` package splits, a dict caches chunk -> ids, and the
        chunks not seen before go to the kernel in one batch."""
        chunks = self._split(text)
        cache = self._cache
        missing = set(chunks).difference(cache)   # C speed: a dict argument is probed, not copied
        if missing:
            missing = list(missing)
            if len(cache) + len(missing) > CACHE_LIMIT:
                cache.clear()
            cache.update(zip(missing, self._encode_chunks(missing)))
        ids = list(chain.from_iterable(map(cache.__getitem__, chunks)))
        for c in missing:
            if len(c) > CACHE_MAX_CHUNK:
                del cache[c]
        return ids

    def _encode_chunks(self, chunks: list[str]) -> list[tuple[int, ...]]:
        """The kernel over many chunks at once: their bytes back to back, with offsets."""
        raw = [c.encode("utf-8", "surrogatepass") for c in chunks]
        offsets = np.zeros(len(raw) + 1, np.int64)
        np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw)), out=offsets[1:])
        buf = np.frombuffer(b"".join(raw), np.uint8)
        ids, out_offsets = _kernels()[0].encode_chunks(buf, offsets, self._byte_ids, *self._merge_table(),
                                                       self._merged)
        ids, o = ids.tolist(), out_offsets.tolist()
        return [tuple(ids[o[k]:o[k + 1]]) for k in range(len(raw))]

    # ---- decoding -----------------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        """Ids -> the tokens' bytes joined (special tokens spelled in UTF-8); for streaming output."""
        arr = as_id_array(ids, self._vocab_size)
        try:
            return b"".join(map(self._id_bytes.__getitem__, arr.tolist()))
        except TypeError:   # a None: an id inside the range that no token has
            holes = sorted({i for i in arr.tolist() if self._id_bytes[i] is None})
            raise ValueError(f"token ids not in this vocabulary: {holes[:10]}") from None

    def decode(self, ids, errors: str = "replace") -> str:
        """Ids -> text; bytes that are not valid UTF-8 become U+FFFD (``errors`` is the handler)."""
        return self.decode_bytes(ids).decode("utf-8", errors)

    # ---- description --------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write a standard file, its format picked by the name (formats.save_tokenizer): ``*.json``
        -> HF tokenizer.json, ``*.tiktoken`` -> tiktoken ranks (+ a JSON sidecar with the pattern and
        specials), a folder -> GPT-2 vocab.json + merges.txt. ``load_tokenizer`` reads each back.
        Checkpoints store ``to_dict()`` instead (our own JSON)."""
        from .formats import save_tokenizer
        save_tokenizer(self, path)

    def to_dict(self) -> dict:
        """JSON-able description. Token bytes are written as latin-1 strings (byte n -> code point n),
        so ASCII tokens stay readable; merges as pairs of such strings."""
        return {"kind": self.kind, "version": FORMAT_VERSION, "pattern": self.pattern,
                "pattern_name": self.pattern_name,
                "vocab": {_latin1(b): i for b, i in sorted(self.vocab.items(), key=lambda kv: kv[1])},
                "merges": [[_latin1(a), _latin1(b)] for a, b in self.merges],
                "special_tokens": dict(self.special_tokens),
                **({"chat": self.chat_info()} if any(self.chat_info().values()) else {})}

    def chat_info(self) -> dict:
        return {"chat_template": self.chat_template, "bos_token": self.bos_token, "eos_token": self.eos_token}

    def set_chat_info(self, chat_template=None, bos_token=None, eos_token=None) -> "BPETokenizer":
        """Attach a chat template and the bos/eos special tokens (each must be a special token or None)."""
        for name, tok in (("bos_token", bos_token), ("eos_token", eos_token)):
            if tok is not None and tok not in self.special_tokens and tok.encode() not in self.vocab:
                raise ValueError(f"{name} {tok!r} is not a token of this tokenizer")
        if chat_template is not None and not isinstance(chat_template, str):
            raise ValueError(f"chat_template must be a string, got {type(chat_template).__name__}")
        self.chat_template, self.bos_token, self.eos_token = chat_template, bos_token, eos_token
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        """Rebuild from ``to_dict()`` output (token strings in latin-1, or base64 with the key
        ``"encoding": "base64"``)."""
        decode = base64.b64decode if d.get("encoding") == "base64" else (lambda s: s.encode("latin-1"))
        vocab = {decode(t): int(i) for t, i in d["vocab"].items()}
        merges = [(decode(a), decode(b)) for a, b in d["merges"]]
        name = d.get("pattern_name")
        # a name only when it still means the stored regex; otherwise the stored regex itself
        pattern = name if name in PATTERNS and PATTERNS[name] == d["pattern"] else d["pattern"]
        tok = cls(vocab, merges, pattern, {str(s): int(i) for s, i in d.get("special_tokens", {}).items()})
        return tok.set_chat_info(**d["chat"]) if d.get("chat") else tok


# ---- validation ---------------------------------------------------------------------------------

def _is_id(i) -> bool:
    return isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0


def _check_vocab(vocab) -> dict[bytes, int]:
    if not isinstance(vocab, dict):
        raise ValueError(f"vocab must be a dict of token bytes -> id, got {type(vocab).__name__}")
    out, owner = {}, {}
    for b, i in vocab.items():
        if not isinstance(b, bytes) or not b:
            raise ValueError(f"vocab keys must be non-empty bytes, got {b!r}")
        if not _is_id(i):
            raise ValueError(f"vocab id of {b!r} must be a non-negative int, got {i!r}")
        if int(i) in owner:
            raise ValueError(f"vocab id {int(i)} is used twice: by {owner[int(i)]!r} and {b!r}")
        owner[int(i)] = b
        out[b] = int(i)
    return out


def _check_merges(merges, vocab) -> list[tuple[bytes, bytes]]:
    out = []
    for r, m in enumerate(merges):
        if not (isinstance(m, (tuple, list)) and len(m) == 2 and all(isinstance(x, bytes) for x in m)):
            raise ValueError(f"merge {r} must be a pair of bytes, got {m!r}")
        a, b = m
        for part in (a, b, a + b):
            if part not in vocab:
                raise ValueError(f"merge {r} ({a!r}, {b!r}): {part!r} is not in the vocab")
        out.append((a, b))
    return out


def _check_specials(specials, vocab) -> dict[str, int]:
    if not isinstance(specials, dict):
        raise ValueError(f"special_tokens must be a dict of string -> id, got {type(specials).__name__}")
    ids = set(vocab.values())
    out = {}
    for s, i in specials.items():
        if not isinstance(s, str) or not s:
            raise ValueError(f"special tokens must be non-empty strings, got {s!r}")
        if not _is_id(i):
            raise ValueError(f"the id of special token {s!r} must be a non-negative int, got {i!r}")
        if int(i) in ids:
            raise ValueError(f"special token {s!r} has id {int(i)}, which is already a vocab token's "
                             f"or another special's")
        ids.add(int(i))
        out[s] = int(i)
    return out
