"""Learning a byte-level BPE vocabulary from text.

1. Cut the text at special tokens (they never take part in merges), then into chunks with the
   pre-tokenizer pattern, and count the unique chunks: a 4 MB corpus has ~840k chunks but only
   ~33k distinct ones, and a pair's count is the sum of its chunks' counts (:func:`count_chunks`).
2. Repeat until the vocabulary is full: merge the most frequent adjacent pair (a, b) into a new
   token, everywhere.

:func:`train_reference` does step 2 as the textbook says (recount every pair after each merge).
The kernel (tinygrad_lm.kernels.cpu.bpe_train.train_merges) gives the same merges incrementally:
live pair counts, an index pair -> chunks that contain it, and a lazy max-heap, so a merge
touches only the chunks that contain its pair.

Tie-break (both versions): the highest count wins; among equal counts, the smallest pair of
token ids (a, then b). Byte tokens are ids 0-255 in byte order and merged tokens count up from
256, so this prefers older tokens and is the same on every machine (no hash or insertion order).

A merge whose bytes spell a token that already exists (a + bc after ab + c) produces that token
again instead of a second id with the same bytes, as HF tokenizers' trainer does: the merge is
listed, the vocabulary does not grow. Training stops early, with a warning, when no pair is left.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .base import check_special_tokens
from .bpe import SCANNED_REGEXES
from .patterns import blocks, make_splitter, resolve_pattern


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"training file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 text (byte offset {e.start}: {e.reason})") from None


def _sources(text_or_paths) -> list:
    """A str is the text itself; a path or a list of paths are files (read one at a time)."""
    if isinstance(text_or_paths, str):
        return [text_or_paths]
    if isinstance(text_or_paths, os.PathLike):
        return [Path(text_or_paths)]
    if isinstance(text_or_paths, Iterable) and not isinstance(text_or_paths, (bytes, dict)):
        paths = list(text_or_paths)
        bad = [p for p in paths if not isinstance(p, (str, os.PathLike))]
        if bad:
            raise ValueError(f"training files must be paths (str or pathlib.Path), got {bad[0]!r}")
        return [Path(p) for p in paths]
    raise ValueError(f"train on a str of text or a list of file paths, got {type(text_or_paths).__name__}")


BLOCK_CHARS = 1 << 23   # a named pattern's text goes to the counting kernel in blocks of ~8M characters


def count_chunks(text_or_paths, pattern: str, special_tokens: Iterable[str] = (), progress: bool = False) -> Counter:
    """Counter chunk -> occurrences over the text or files, cut at ``special_tokens`` first.

    A named pattern's chunks are counted by the kernel's scanner (kernels/cpu/bpe_text.py), a
    block of text at a time, so only the distinct chunks become Python strings; any other regex
    (and "none") by the ``regex`` package. Both give the same counts (tested)."""
    regex_str, name = resolve_pattern(pattern)
    scanner = SCANNED_REGEXES.get(regex_str)
    count = _count_by_regex(make_splitter(regex_str, name)) if scanner in (None, 0) else _count_by_kernel(scanner)
    specials = sorted(special_tokens, key=len, reverse=True)
    sources = _sources(text_or_paths)
    counts: Counter = Counter()
    bar = None
    if progress and any(isinstance(s, Path) for s in sources):
        from tqdm import tqdm
        bar = tqdm(total=len(sources), desc="bpe count", unit="file", file=sys.stderr)
    for src in sources:
        pieces = [src if isinstance(src, str) else _read(src)]
        for s in specials:
            pieces = [p for piece in pieces for p in piece.split(s)]
        for piece in pieces:
            count(piece, counts)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return counts


def _count_by_regex(split):
    def count(text: str, counts: Counter) -> None:
        counts.update(split(text))
    return count


def _count_by_kernel(scanner: int):
    from tinygrad_lm.kernels.cpu import bpe_text   # Numba loads only when training

    def count(text: str, counts: Counter) -> None:
        for block in blocks(text, BLOCK_CHARS):
            cps = np.frombuffer(block.encode("utf-32-le", "surrogatepass"), np.uint32)
            starts, lengths, n = bpe_text.count_chunks(cps, bpe_text.char_classes(), scanner)
            ends = (starts + lengths).tolist()
            counts.update(dict(zip(map(block.__getitem__, map(slice, starts.tolist(), ends)), n.tolist())))
    return count


def train_reference(chunk_counts: dict[str, int], n_new: int) -> list[tuple[int, int, int]]:
    """Step 2 in plain Python, recounting every pair after each merge: (a, b, new id) per merge.

    Slow (a pass over all chunks per merge); it is here to be read, and tests check the kernel
    against it."""
    words = [(list(c.encode("utf-8", "surrogatepass")), n) for c, n in chunk_counts.items()]
    spelling = [bytes([i]) for i in range(256)]
    id_of = {b: i for i, b in enumerate(spelling)}
    merges = []
    while len(spelling) - 256 < n_new:
        stats: Counter = Counter()
        for w, n in words:
            for pair in zip(w, w[1:]):
                stats[pair] += n
        if not stats:
            break
        a, b = max(stats, key=lambda p: (stats[p], -p[0], -p[1]))   # the tie-break rule
        new = id_of.setdefault(spelling[a] + spelling[b], len(spelling))
        if new == len(spelling):
            spelling.append(spelling[a] + spelling[b])
        merges.append((a, b, new))
        for w, _ in words:
            i = 0
            while i < len(w) - 1:   # left to right: "a a a" with (a, a) -> "aa a"
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [new]
                i += 1
    return merges


def learn_merges(chunk_counts: dict[str, int], n_new: int, progress: bool = False) -> np.ndarray:
    """The kernel over counted chunks: (k, 3) int32 rows (a, b, new id), as train_reference."""
    raw = [c.encode("utf-8", "surrogatepass") for c in chunk_counts]
    start = np.zeros(len(raw) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, raw), np.int64, len(raw)), out=start[1:])
    tok = np.frombuffer(b"".join(raw), np.uint8).astype(np.int32)
    weight = np.fromiter(chunk_counts.values(), np.int64, len(raw))
    from tinygrad_lm.kernels.cpu import bpe_train as kernel   # Numba loads only when training
    done = np.zeros(1, np.int64)
    if not progress:
        return kernel.train_merges(tok, start, weight, n_new, done)[0]

    # The kernel releases the GIL: it runs in a thread while this one draws the bar.
    from tqdm import tqdm
    result, error = [], []

    def work():
        try:
            result.append(kernel.train_merges(tok, start, weight, n_new, done)[0])
        except BaseException as e:  # re-raised below, in the caller's thread
            error.append(e)
    worker = threading.Thread(target=work, name="bpe-train", daemon=True)
    worker.start()
    with tqdm(total=n_new, desc="bpe merges", unit="tok", file=sys.stderr) as bar:
        while worker.is_alive():
            worker.join(0.1)
            bar.update(int(done[0]) - bar.n)
        bar.update(int(done[0]) - bar.n)
    if error:
        raise error[0]
    return result[0]


def train_bpe(cls, text_or_paths, vocab_size: int, pattern: str = "gpt4",
              special_tokens: Iterable[str] = ("<|endoftext|>",), progress: bool = True):
    """BPETokenizer.train (see there)."""
    resolve_pattern(pattern)   # a bad pattern fails before any reading
    specials = check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
    n_new = int(vocab_size) - 256 - len(specials)
    if n_new < 0:
        raise ValueError(f"vocab_size {vocab_size} is too small: the 256 bytes and {len(specials)} special "
                         f"token(s) need at least {256 + len(specials)}")

    counts = count_chunks(text_or_paths, pattern, specials, progress)
    merges = learn_merges(counts, n_new, progress) if n_new else np.zeros((0, 3), np.int32)

    spelling = [bytes([i]) for i in range(256)]
    merge_bytes = []
    for a, b, new in merges.tolist():
        if new == len(spelling):
            spelling.append(spelling[a] + spelling[b])
        merge_bytes.append((spelling[a], spelling[b]))
    if len(spelling) < 256 + n_new:
        warnings.warn(f"the training text has no pairs left to merge after {len(spelling) - 256} merges: the "
                      f"vocabulary has {len(spelling) + len(specials)} tokens, not {vocab_size}", stacklevel=3)
    vocab = {b: i for i, b in enumerate(spelling)}
    return cls(vocab, merge_bytes, pattern, {s: len(spelling) + k for k, s in enumerate(specials)})
