"""Training data: text -> token ids cached on disk -> random (x, y) batches.

    data, tok = load_dataset("input.txt", tokenizer="char")       # or a folder, or None
    x, y = data.get_batch("train", batch_size=12, block_size=64, rng=np.random.default_rng(0))

Sources. ``path`` may be a UTF-8 text file, a folder (every non-hidden file below
it, recursively, in sorted path order; binary or non-UTF-8 files are skipped with
a warning), or ``None`` for the built-in corpus: this Python's own standard
library source, so training needs no download.

Cache. Tokens are written once to ``<cache_dir>/tokens/<key>.bin`` (raw uint16 or
uint32, like nanoGPT's train.bin) plus ``<key>.json`` (metadata, incl. the
tokenizer), and memory-mapped on later runs. The key hashes the corpus text and
the tokenizer, so editing the data or changing tokenizer gives a new entry. Both
files are written to a temp file and renamed into place (json last, as the
commit marker): an interrupted run never leaves a half-written entry. The cache
directory is ``cache_dir``, else tinygrad_lm.cache.cache_dir() (``$TINYGRAD_LM_CACHE``, else
``$XDG_CACHE_HOME/tinygrad_lm``, else ``~/.cache/tinygrad_lm``).

Split. Like nanoGPT: the first 90% of the tokens train, the last 10% validate.

Errors are ``DataError`` (a ValueError) with messages meant for end users; a
missing path raises ``DataPathNotFoundError``, which is also a FileNotFoundError.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
import sysconfig
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cache as _cache
from .cache import CACHE_ENV_VAR  # noqa: F401  (re-exported)
from .tokenizers import Tokenizer, make_tokenizer, token_dtype, tokenizer_from_dict
from .tokenizers.base import canonical_json

DEFAULT_CORPUS_BYTES = 4_000_000   # "4 MB": ~1M tokens/min of CPU training is plenty
DEFAULT_CORPUS_NAME = "python-stdlib"
DEFAULT_CORPUS_DESCRIPTION = (f"the Python {sys.version_info.major}.{sys.version_info.minor} standard library's "
                              "own *.py source (tests and generated tables excluded), concatenated in sorted path order")
TRAIN_FRACTION = 0.9
CACHE_FORMAT = 1  # bump when the cached bytes would change for the same text and tokenizer


class DataError(ValueError):
    """A data problem the user must fix (empty file, not UTF-8, corpus too short, ...)."""


class DataPathNotFoundError(FileNotFoundError, DataError):
    """The data path does not exist (both a FileNotFoundError and a DataError)."""


# ---------------------------------------------------------------- reading text

@dataclass(frozen=True)
class Corpus:
    """The text of a data source and where it came from."""
    text: str
    name: str                                         # the path as given, or DEFAULT_CORPUS_NAME
    files: tuple[str, ...] = ()                       # files read (relative to a folder)
    skipped: tuple[str, ...] = ()                     # folder files skipped as binary / not UTF-8

    @property
    def sha256(self) -> str:
        """Hash of the text. The tokens depend only on the text and the tokenizer, and
        the text already holds the file list (order and boundaries), so this is the
        content part of the cache key."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def _decode_file(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 text (byte offset {e.start}: {e.reason})") from None


def _is_text(raw: bytes) -> bool:
    # A NUL byte is valid UTF-8 but a sure sign of a binary file (images, .pyc, ...).
    if b"\0" in raw:
        return False
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _walk_sorted(root: Path, skip_dir=lambda name: False):
    """Files below root as (relative posix path, Path), sorted by that path; hidden
    entries (.git, .DS_Store, ...) and directories for which skip_dir(name) is true are left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and not skip_dir(d)]
        for f in filenames:
            if not f.startswith("."):
                p = Path(dirpath, f)
                found.append((p.relative_to(root).as_posix(), p))
    return sorted(found)


def read_corpus(path) -> Corpus:
    """Read a text file or a folder of text files. ``path=None`` gives the default corpus.

    A single file must be UTF-8 (DataError naming the path and byte offset otherwise).
    In a folder, files are read in sorted path order, each ending in a newline, and
    unreadable (e.g. broken links), binary and non-UTF-8 files are skipped with a warning.
    Empty results are errors.
    """
    if path is None:
        return default_corpus()
    if str(path) == "":  # Path("") is ".", which would quietly read the working directory
        raise DataError("the data path is empty")
    p = Path(path)
    if not p.exists():
        raise DataPathNotFoundError(f"data path not found: {path}")
    if p.is_file():
        text = _decode_file(p, p.read_bytes())
        if not text:
            raise DataError(f"{path}: the file is empty")
        return Corpus(text, str(path), (p.name,))
    if not p.is_dir():
        raise DataError(f"{path}: not a regular file or a folder")
    parts, files, skipped = [], [], []
    for rel, f in _walk_sorted(p):
        try:
            raw = f.read_bytes()
        except OSError:  # a broken link, a file we may not read: skipped like a binary one, said below
            raw = b"\0"
        if not _is_text(raw):
            skipped.append(rel)
            continue
        text = raw.decode("utf-8")
        parts.append(text if not text or text.endswith("\n") else text + "\n")
        files.append(rel)
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"{path}: skipped {len(skipped)} unreadable, binary or non-UTF-8 file(s): {shown}",
                      stacklevel=2)
    text = "".join(parts)
    if not text:
        raise DataError(f"{path}: no text in this folder ({len(files)} empty text file(s), "
                        f"{len(skipped)} unreadable, binary or non-UTF-8 file(s) skipped)")
    return Corpus(text, str(path), tuple(files), tuple(skipped))


# ---------------------------------------------------------------- default corpus

# Tests are left out: they are huge, repetitive, and full of deliberately odd text.
# encodings/ (charmap tables) and pydoc_data/ (one giant string) are generated, not
# written code: 2 MB that would teach the model tables rather than Python.
# _sysconfigdata_* and config-*/ are generated at build time (they hold the build
# machine's paths), so they would make the corpus differ between installs.
_STDLIB_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
                     "encodings", "pydoc_data"}


def _stdlib_skip_dir(name: str) -> bool:
    return name in _STDLIB_SKIP_DIRS or name.startswith("config-")


def default_corpus_files() -> list[tuple[str, Path]]:
    """The stdlib *.py files of the default corpus, as (relative path, Path), in order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"the Python standard library source was not found at {root}; pass a data path instead")
    return [(rel, p) for rel, p in _walk_sorted(root, _stdlib_skip_dir)
            if rel.endswith(".py") and not p.name.startswith("_sysconfigdata")]


def default_corpus(max_bytes: int | None = DEFAULT_CORPUS_BYTES) -> Corpus:
    """The built-in corpus (see ``default_corpus_text``) as a Corpus."""
    if max_bytes is not None and max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive, got {max_bytes}")
    parts, files, size = [], [], 0
    for rel, p in default_corpus_files():
        raw = p.read_bytes()
        if not _is_text(raw):  # a patched or odd install; skipping keeps it deterministic
            continue
        # A header per file tells the model (and a reader of samples) where a file starts.
        header = f"# ==== {rel} ====\n".encode()
        part = header + (raw if raw.endswith(b"\n") else raw + b"\n")
        parts.append(part)
        files.append(rel)
        size += len(part)
        if max_bytes is not None and size >= max_bytes:
            break
    data = b"".join(parts)
    if max_bytes is not None:
        # Cut at max_bytes, dropping a trailing partial multi-byte character.
        data = data[:max_bytes].decode("utf-8", "ignore").encode("utf-8")
    if not data:
        raise DataError(f"no Python source found in the standard library at {sysconfig.get_paths()['stdlib']}")
    return Corpus(data.decode("utf-8"), DEFAULT_CORPUS_NAME, tuple(files))


def default_corpus_text(max_bytes: int | None = DEFAULT_CORPUS_BYTES) -> str:
    """The built-in training text: the standard library's *.py files (no test folders,
    no generated encodings/ and pydoc_data/) in sorted path order, each preceded by
    ``# ==== <relative path> ====``, cut to at most ``max_bytes`` UTF-8 bytes (None:
    no cap). Deterministic for a given Python installation (version and build), and
    present on any machine that runs this package."""
    return default_corpus(max_bytes).text


# ---------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    """``$TINYGRAD_LM_CACHE``, else ``$XDG_CACHE_HOME/tinygrad_lm``, else ``~/.cache/tinygrad_lm``."""
    return _cache.cache_dir()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename over ``path``: readers see
    the old file or the complete new one, never a prefix."""
    # Not tempfile.mkstemp: it creates files with mode 0600; os.open with 0o666 lets the
    # umask decide, like any other file. O_EXCL + pid + random suffix: no clashes
    # between processes filling the same cache entry at once.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_cache(bin_path: Path, meta_path: Path, expect: dict):
    """(memmap, meta) if a complete matching entry exists, else None."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if any(meta.get(k) != v for k, v in expect.items()):
            return None
        dtype, n = np.dtype(meta["dtype"]), int(meta["num_tokens"])
        if n <= 0 or bin_path.stat().st_size != n * dtype.itemsize:
            return None
        return np.memmap(bin_path, dtype=dtype, mode="r", shape=(n,)), meta
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: rebuild it


def trained_bpe(text: str, vocab_size: int, cache_dir=None, progress: bool = False) -> Tokenizer:
    """A byte-level BPE (pattern "gpt4", special token <|endoftext|>) trained on ``text``, cached
    under ``<cache>/tokenizers/`` by a hash of the text and the settings: training takes seconds
    to minutes, and the same data and settings always give the same merges."""
    from .tokenizers import BPETokenizer
    pattern, specials = "gpt4", ("<|endoftext|>",)
    settings = canonical_json({"vocab_size": vocab_size, "pattern": pattern, "specials": specials})
    key = hashlib.sha256(f"{text}\n{settings}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = folder / "tokenizers" / f"bpe-{key}.json"
    try:
        return tokenizer_from_dict(json.loads(path.read_text(encoding="ascii")))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not there yet, or damaged: train it
    tok = BPETokenizer.train(text, vocab_size, pattern=pattern, special_tokens=specials, progress=progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, (canonical_json(tok.to_dict()) + "\n").encode("ascii"))
    except OSError as e:
        warnings.warn(f"could not cache the trained tokenizer in {folder} ({e})", stacklevel=2)
    return tok


# ---------------------------------------------------------------- dataset

@dataclass
class TokenData:
    """Train/val token arrays (memmaps when cached) and the tokenizer that made them."""
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    source: str                        # the path as given, or DEFAULT_CORPUS_NAME
    from_cache: bool = False           # True when the tokens came from an existing cache entry
    cache_path: Path | None = None     # the .bin file, or None if caching failed
    skipped_files: int = 0             # folder files skipped as binary / not UTF-8
    train_fraction: float = field(default=TRAIN_FRACTION, repr=False)

    @property
    def num_tokens(self) -> int:
        return len(self.train) + len(self.val)

    def split(self, name: str) -> np.ndarray:
        if name == "train":
            return self.train
        if name == "val":
            return self.val
        raise ValueError(f"split must be 'train' or 'val', got {name!r}")

    def check_block_size(self, block_size: int) -> None:
        """Raise DataError unless both splits can give a (block_size + 1)-token window;
        call it before training to fail fast rather than at the first eval."""
        for name in ("train", "val"):
            n = len(self.split(name))
            if n < block_size + 1:
                share = self.train_fraction if name == "train" else 1 - self.train_fraction
                raise DataError(
                    f"the {name} split of {self.source} has {n} tokens, but block_size={block_size} needs at "
                    f"least {block_size + 1} (the corpus has {self.num_tokens} tokens, {share:.0%} go to {name}); "
                    f"use more text or a smaller block size")

    def get_batch(self, split: str, batch_size: int, block_size: int, rng: np.random.Generator):
        """Random contiguous windows, like nanoGPT: returns int64 arrays x, y of shape
        (batch_size, block_size) with ``y[:, t] == x[:, t + 1]`` along the text, i.e.
        y is the next token after each position of x. Same rng state -> same batch."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng)}")
        if batch_size < 1 or block_size < 1:
            raise ValueError(f"batch_size and block_size must be >= 1, got {batch_size}, {block_size}")
        data = self.split(split)
        if len(data) < block_size + 1:
            self.check_block_size(block_size)
        starts = rng.integers(0, len(data) - block_size, size=batch_size)      # last start: len - block_size - 1
        window = data[starts[:, None] + np.arange(block_size + 1)].astype(np.int64)  # (B, T+1), one gather
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


def load_dataset(path=None, tokenizer: str | Tokenizer = "char", cache_dir=None, *,
                 max_bytes: int | None = DEFAULT_CORPUS_BYTES,
                 train_fraction: float = TRAIN_FRACTION, bpe_vocab_size: int = 4096,
                 progress: bool = False) -> tuple[TokenData, Tokenizer]:
    """Read, tokenize (or load from cache) and split a corpus.

    path:       text file, folder, or None for the default corpus (capped at ``max_bytes``).
    tokenizer:  "char" (vocabulary built from the whole text), "byte", "bpe" (a byte-level
                BPE of ``bpe_vocab_size`` tokens, pattern "gpt4", trained on the first
                ``train_fraction`` of the text and cached, see trained_bpe), or a Tokenizer
                instance (e.g. a checkpoint's; a char vocabulary missing some of the
                text's characters raises UnknownCharactersError, a ValueError).
    progress:   a progress bar (stderr) while a BPE is trained.
    cache_dir:  cache root (see module docstring). If it cannot be written, a warning
                is issued and the tokens stay in memory.
    Returns (data, data.tokenizer).
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    corpus = default_corpus(max_bytes) if path is None else read_corpus(path)
    if tokenizer == "bpe":
        tokenizer = trained_bpe(corpus.text[:int(len(corpus.text) * train_fraction)], bpe_vocab_size,
                                cache_dir, progress)
    if isinstance(tokenizer, Tokenizer):
        tok_spec = tokenizer.fingerprint()
    elif tokenizer == "char":
        tok_spec = "char-from-corpus"  # the vocabulary is a function of the text itself
    else:
        tokenizer = make_tokenizer(tokenizer)  # ValueError for unknown kinds
        tok_spec = tokenizer.fingerprint()

    content = corpus.sha256
    key = hashlib.sha256(f"{CACHE_FORMAT}\n{content}\n{tok_spec}".encode()).hexdigest()[:32]
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    bin_path, meta_path = folder / "tokens" / f"{key}.bin", folder / "tokens" / f"{key}.json"
    expect = {"format": CACHE_FORMAT, "content_sha256": content, "tokenizer_spec": tok_spec}

    hit = _read_cache(bin_path, meta_path, expect)
    if hit is not None:
        tokens, meta = hit
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer_from_dict(meta["tokenizer"])
        from_cache = True
    else:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else make_tokenizer("char", corpus.text)
        # a special token's spelling in training text is text, as with the byte tokenizer (BPE's
        # own default, like tiktoken's, refuses it)
        extra = {"allowed_special": "none"} if tok.kind == "bpe" else {}
        tokens = tok.encode_array(corpus.text, dtype=token_dtype(tok.vocab_size), **extra)
        from_cache = False
        meta = dict(expect, dtype=tokens.dtype.name, num_tokens=len(tokens), source=corpus.name,
                    files=len(corpus.files), tokenizer=tok.to_dict())
        try:
            bin_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(bin_path, tokens.tobytes())
            _atomic_write(meta_path, (canonical_json(meta) + "\n").encode("ascii"))  # last: marks it complete
            tokens = np.memmap(bin_path, dtype=tokens.dtype, mode="r", shape=tokens.shape)
        except OSError as e:
            warnings.warn(f"could not write the token cache in {folder} ({e}); keeping tokens in memory",
                          stacklevel=2)
            bin_path = None

    n_train = int(len(tokens) * train_fraction)
    data = TokenData(tokens[:n_train], tokens[n_train:], tok, corpus.name, from_cache, bin_path,
                     len(corpus.skipped), train_fraction)
    return data, tok
