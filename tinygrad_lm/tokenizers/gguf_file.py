"""The tokenizer inside a GGUF model file (llama.cpp's format), as a BPETokenizer.

A GGUF file starts with a header of typed key/value pairs; a byte-level BPE tokenizer is the keys
``tokenizer.ggml.model`` ("gpt2"), ``.tokens`` (GPT-2-spelled strings, index = id), ``.merges``
("a b" strings, priority order), ``.token_type`` (1 normal, 3 control, ...), ``.pre`` (llama.cpp's
name for the pre-tokenizer) and ``.bos_token_id`` / ``.eos_token_id``.

Why our own header reader and not ``gguf.GGUFReader``: the header comes from a stranger, and
GGUFReader trusts its counts (an array claiming 2**60 entries loops that many times, and each entry
becomes a NumPy object), builds views of every tensor, and took 1.8 s on SmolLM2's 98 MB file.
``read_gguf_metadata`` walks only the key/value section of a memory map, checks every length
against the bytes left in the file before touching them, and keeps only the keys asked for; the
tests check it against GGUFReader on the real file.
"""
from __future__ import annotations

import contextlib
import mmap
import struct
from pathlib import Path

from gguf import GGUFValueType

from .bpe import BPETokenizer
from .formats import build, parse_merges, unspell

GGUF_MAGIC = b"GGUF"
_SCALARS = {GGUFValueType.UINT8: "B", GGUFValueType.INT8: "b", GGUFValueType.UINT16: "H", GGUFValueType.INT16: "h",
            GGUFValueType.UINT32: "I", GGUFValueType.INT32: "i", GGUFValueType.FLOAT32: "f",
            GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "Q", GGUFValueType.INT64: "q",
            GGUFValueType.FLOAT64: "d"}
_MAX_DEPTH = 4  # arrays of arrays are legal; a deeper nest is a corrupt or hostile header

# llama.cpp's tokenizer.ggml.pre names -> our patterns. The regexes are those models' tokenizer.json
# splits (llama.cpp re-implements them by hand): "smollm" and "starcoder" put each number character
# alone before GPT-2's split; Llama 3 and Qwen2 are cl100k-like.
LLAMA3 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
          r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN2 = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
         r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
GGUF_PRE = {"gpt-2": "gpt2", "smollm": "smollm", "starcoder": "smollm", "llama-bpe": LLAMA3, "qwen2": QWEN2}

# token_type values (llama.cpp's llama_token_type): normal and byte tokens are BPE pieces spelled
# GPT-2's way; control (3), user-defined (4), unknown (2) and unused (5) are matched whole: specials.
NORMAL, BYTE = 1, 6


class _Cursor:
    """Reads little/big-endian values from a memory map, checking each length against what is left."""

    def __init__(self, buf, path: Path, order: str):
        self.buf, self.path, self.order, self.pos = buf, path, order, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > len(self.buf) - self.pos:
            raise ValueError(f"{self.path}: corrupt or truncated GGUF header: {what}: {n} bytes needed at offset "
                             f"{self.pos}, the file has {len(self.buf) - self.pos} left")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(self.order + fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str, keep: bool = True) -> str | None:
        n = self.scalar("Q", what)
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n] if keep else None
        self.pos += n
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.path}: corrupt GGUF header: {what} is not UTF-8") from None

    def value(self, vtype: int, what: str, keep: bool, depth: int = 0):
        try:
            vtype = GGUFValueType(vtype)
        except ValueError:
            raise ValueError(f"{self.path}: corrupt GGUF header: {what} has unknown type {vtype}") from None
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        if vtype == GGUFValueType.STRING:
            return self.string(what, keep)
        if depth >= _MAX_DEPTH:
            raise ValueError(f"{self.path}: corrupt GGUF header: {what} nests arrays deeper than {_MAX_DEPTH}")
        etype, count = self.scalar("I", what), self.scalar("Q", what)
        # Every element takes at least one byte (a string at least its 8-byte length): a count the
        # rest of the file cannot hold is rejected before anything is looped over or allocated.
        esize = struct.calcsize(_SCALARS[etype]) if etype in _SCALARS else 8 if etype == GGUFValueType.STRING else 12
        self.need(count * esize, f"{what} ({count} elements)")
        if etype in _SCALARS:
            fmt = f"{self.order}{count}{_SCALARS[etype]}"
            out = list(struct.unpack_from(fmt, self.buf, self.pos)) if keep else None
            self.pos += count * esize
            return out
        if not keep:
            for _ in range(count):
                self.value(etype, what, False, depth + 1)
            return None
        return [self.value(etype, what, True, depth + 1) for _ in range(count)]


@contextlib.contextmanager
def mapped_gguf(path):
    """A cursor over a GGUF file mapped read-only, checked to start with the magic bytes.
    FileNotFoundError if missing; ValueError naming the file if it is not GGUF."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file (it does not start with the bytes 'GGUF')")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            yield _Cursor(buf, path, "<")


def read_gguf_metadata(path, prefix: str = "") -> dict:
    """The header key/value pairs of a GGUF file whose keys start with ``prefix`` (strings, numbers,
    lists). FileNotFoundError if missing; ValueError naming the file if it is not GGUF or its header
    is corrupt or truncated. Memory use is bounded by the kept values, never by a header's counts."""
    with mapped_gguf(path) as cur:
        meta, n_tensors = walk_metadata(cur, cur.path, lambda key: key.startswith(prefix))
        if n_tensors > len(cur.buf):  # tensor infos follow the pairs; we read none, but a wild count is corruption
            raise ValueError(f"{cur.path}: corrupt GGUF header: {n_tensors} tensors in a {len(cur.buf)}-byte file")
        return meta


def walk_metadata(cur: _Cursor, path: Path, keep) -> tuple[dict, int]:
    """(the key/value pairs whose key ``keep(key)`` accepts, the tensor count), reading from just
    after the magic; the cursor is left at the tensor infos (hub/gguf_model.py reads those)."""
    cur.pos = 4
    version = cur.scalar("I", "version")
    if version & 0xFFFF == 0:  # written on a big-endian machine
        cur.order, version = ">", struct.unpack(">I", struct.pack("<I", version))[0]
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version}; versions 2 and 3 are supported")
    n_tensors, n_kv = cur.scalar("Q", "tensor count"), cur.scalar("Q", "key/value count")
    cur.need(n_kv * 13, f"{n_kv} key/value pairs")  # a key's length, a type, a 1-byte value at least
    meta, seen = {}, set()
    for _ in range(n_kv):
        key = cur.string("a key")
        if key in seen:
            raise ValueError(f"{path}: corrupt GGUF header: key {key!r} appears twice")
        seen.add(key)
        vtype = cur.scalar("I", f"type of {key!r}")
        wanted = keep(key)
        value = cur.value(vtype, repr(key), wanted)
        if wanted:
            meta[key] = value
    return meta, n_tensors


def _pattern(pre, path: Path) -> str:
    if pre not in GGUF_PRE:
        raise ValueError(f"{path}: tokenizer.ggml.pre is {pre!r}; supported pre-tokenizers: {', '.join(GGUF_PRE)}")
    return GGUF_PRE[pre]


def read_gguf_tokenizer(path) -> dict:
    """The byte-level BPE tokenizer of a GGUF file as plain parts: ``vocab`` {bytes: id}, ``merges``,
    ``pattern``, ``special_tokens`` {str: id}, ``bos_token_id``, ``eos_token_id`` (None if absent) and
    ``chat_template`` (str or None). ValueError naming the file for anything else."""
    path = Path(path)
    meta = read_gguf_metadata(path, prefix="tokenizer.")
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"{path}: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported")
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens or [])
    if not isinstance(tokens, list) or not isinstance(merges, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: expected tokenizer.ggml.tokens and tokenizer.ggml.merges as lists of strings")
    if len(types) != len(tokens):
        raise ValueError(f"{path}: {len(types)} token types for {len(tokens)} tokens")
    pattern = _pattern(meta.get("tokenizer.ggml.pre"), path)
    vocab, specials = {}, {}
    for i, (s, t) in enumerate(zip(tokens, types)):
        if t in (NORMAL, BYTE):
            vocab[unspell(s, str(path))] = i
        else:
            specials[s] = i
    ids = {}
    for name in ("bos", "eos"):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        if i is not None and not (isinstance(i, int) and 0 <= i < len(tokens)):
            raise ValueError(f"{path}: tokenizer.ggml.{name}_token_id {i!r} is outside the {len(tokens)} tokens")
        ids[name] = i
    return {"vocab": vocab, "merges": parse_merges(merges, path), "pattern": pattern, "special_tokens": specials,
            "bos_token_id": ids["bos"], "eos_token_id": ids["eos"],
            "chat_template": meta.get("tokenizer.chat_template")}


def load_gguf_tokenizer(path) -> BPETokenizer:
    """The BPETokenizer stored in a GGUF model file (see ``read_gguf_tokenizer``)."""
    parts = read_gguf_tokenizer(path)
    tok = build(Path(path), parts["vocab"], parts["merges"], parts["pattern"], parts["special_tokens"])
    names = {i: s for s, i in parts["special_tokens"].items()}  # bos/eos ids -> their special token strings
    return tok.set_chat_info(parts["chat_template"], names.get(parts["bos_token_id"]), names.get(parts["eos_token_id"]))
