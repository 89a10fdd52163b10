"""data.py: reading sources, the token cache, the 90/10 split, batches, the default corpus."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_lm import data as D
from tinygrad_lm.tokenizers import ByteTokenizer, CharTokenizer, UnknownCharactersError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20


@pytest.fixture(autouse=True)
def _no_home_cache(tmp_path, monkeypatch):
    # Safety net: a test that forgets cache_dir still never touches ~/.cache.
    monkeypatch.setenv(D.CACHE_ENV_VAR, str(tmp_path / "env-cache"))


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "input.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _entries(cache):
    return sorted(p.name for p in (cache / "tokens").iterdir()) if (cache / "tokens").exists() else []


# ---------------------------------------------------------------- loading + split

@pytest.mark.parametrize("kind", ["char", "byte"])
def test_load_file_tokens_and_split(text_file, cache, kind):
    data, tok = D.load_dataset(text_file, kind, cache_dir=cache)
    assert data.tokenizer is tok and tok.kind == kind
    n = len(TEXT.encode()) if kind == "byte" else len(TEXT)
    assert data.num_tokens == n
    assert len(data.train) == int(n * 0.9) and len(data.val) == n - int(n * 0.9)
    assert tok.decode(np.concatenate([data.train, data.val])) == TEXT  # first 90% train, last 10% val
    assert data.train.dtype == np.uint16 and data.val.dtype == np.uint16
    assert isinstance(data.train, np.memmap) and not data.from_cache
    assert data.cache_path.parent == cache / "tokens" and data.source == str(text_file)
    if kind == "char":
        assert tok.chars == sorted(set(TEXT))


def test_train_fraction_parameter(text_file, cache):
    data, _ = D.load_dataset(text_file, "char", cache_dir=cache, train_fraction=0.5)
    assert len(data.train) == len(TEXT) // 2
    with pytest.raises(ValueError):
        D.load_dataset(text_file, "char", cache_dir=cache, train_fraction=1.0)


def test_large_vocab_uses_uint32(tmp_path, cache):
    chars = [chr(c) for c in range(0x20, 0x20 + 70_000) if not 0xD800 <= c < 0xE000]
    tok = CharTokenizer(chars)
    p = tmp_path / "big.txt"
    p.write_text(chars[-1] * 10 + "abc" * 10, encoding="utf-8")
    data, _ = D.load_dataset(p, tok, cache_dir=cache)
    assert data.train.dtype == np.uint32 and int(data.train[0]) == len(chars) - 1
    again, _ = D.load_dataset(p, tok, cache_dir=cache)
    assert again.from_cache and again.train.dtype == np.uint32


def test_given_char_tokenizer_missing_chars(text_file, cache):
    with pytest.raises(UnknownCharactersError, match="'F'"):
        D.load_dataset(text_file, CharTokenizer.from_text("abc"), cache_dir=cache)


def test_unknown_tokenizer_kind(text_file, cache):
    with pytest.raises(ValueError, match="wordpiece"):
        D.load_dataset(text_file, "wordpiece", cache_dir=cache)


# ---------------------------------------------------------------- cache

@pytest.mark.parametrize("kind", ["char", "byte"])
def test_cache_hit_does_not_retokenize(text_file, cache, monkeypatch, kind):
    first, tok1 = D.load_dataset(text_file, kind, cache_dir=cache)

    def boom(*a, **k):
        raise AssertionError("re-tokenized on a cache hit")
    monkeypatch.setattr(CharTokenizer, "encode_array", boom)
    monkeypatch.setattr(CharTokenizer, "from_text", boom)
    monkeypatch.setattr(ByteTokenizer, "encode_array", boom)
    second, tok2 = D.load_dataset(text_file, kind, cache_dir=cache)
    assert second.from_cache and tok2 == tok1 and tok2.fingerprint() == tok1.fingerprint()
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)
    assert len(_entries(cache)) == 2  # one .bin + one .json


def test_cache_key_changes_with_content_and_tokenizer(text_file, cache):
    D.load_dataset(text_file, "char", cache_dir=cache)
    assert len(_entries(cache)) == 2
    assert not D.load_dataset(text_file, "byte", cache_dir=cache)[0].from_cache
    assert not D.load_dataset(text_file, ByteTokenizer(["<|x|>"]), cache_dir=cache)[0].from_cache
    assert not D.load_dataset(text_file, CharTokenizer.from_text(TEXT + "z"), cache_dir=cache)[0].from_cache
    text_file.write_text(TEXT + "more", encoding="utf-8")
    data, tok = D.load_dataset(text_file, "char", cache_dir=cache)
    assert not data.from_cache and tok.decode(data.val).endswith("more")
    assert len(_entries(cache)) == 10
    assert D.load_dataset(text_file, "char", cache_dir=cache)[0].from_cache


def test_cache_dir_from_env_and_default(text_file, tmp_path, monkeypatch):
    monkeypatch.setenv(D.CACHE_ENV_VAR, str(tmp_path / "from-env"))
    data, _ = D.load_dataset(text_file, "byte")
    assert data.cache_path.parent == tmp_path / "from-env" / "tokens"
    monkeypatch.delenv(D.CACHE_ENV_VAR)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert D.default_cache_dir() == tmp_path / "home" / ".cache" / "tinygrad_lm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert D.default_cache_dir() == tmp_path / "xdg" / "tinygrad_lm"


def test_no_stray_temp_files(text_file, cache):
    for kind in ("char", "byte", "char"):
        D.load_dataset(text_file, kind, cache_dir=cache)
    names = _entries(cache)
    assert len(names) == 4 and all(n.endswith((".bin", ".json")) and not n.startswith(".") for n in names)


@pytest.mark.parametrize("crash_at", [1, 2])  # 1: while writing tokens, 2: while writing the metadata
def test_interrupted_write_leaves_no_partial_cache(text_file, cache, monkeypatch, crash_at):
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == crash_at:
            raise KeyboardInterrupt
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        D.load_dataset(text_file, "char", cache_dir=cache)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not any(n.endswith(".tmp") for n in _entries(cache))
    assert not any(n.endswith(".json") for n in _entries(cache))  # nothing committed
    data, tok = D.load_dataset(text_file, "char", cache_dir=cache)
    assert not data.from_cache and tok.decode(np.concatenate([data.train, data.val])) == TEXT


def test_damaged_cache_is_rebuilt(text_file, cache):
    data, _ = D.load_dataset(text_file, "byte", cache_dir=cache)
    path = data.cache_path
    del data
    path.write_bytes(path.read_bytes()[:10])  # truncated .bin
    again, tok = D.load_dataset(text_file, "byte", cache_dir=cache)
    assert not again.from_cache and again.num_tokens == len(TEXT.encode())
    path.with_suffix(".json").write_text("{garbage")
    assert not D.load_dataset(text_file, "byte", cache_dir=cache)[0].from_cache


def test_unwritable_cache_warns_and_keeps_tokens_in_memory(text_file, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # a file where the cache folder should be (fails even as root)
    with pytest.warns(UserWarning, match="token cache"):
        data, tok = D.load_dataset(text_file, "char", cache_dir=blocker)
    assert data.cache_path is None and tok.decode(data.train) == TEXT[:len(data.train)]


# ---------------------------------------------------------------- errors

def test_missing_path(tmp_path, cache):
    missing = tmp_path / "nope.txt"
    with pytest.raises(D.DataPathNotFoundError, match="nope.txt") as info:
        D.load_dataset(missing, cache_dir=cache)
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, D.DataError)


def test_empty_path_string_is_not_the_working_directory(cache):
    with pytest.raises(D.DataError, match="empty"):
        D.load_dataset("", cache_dir=cache)


def test_empty_file(tmp_path, cache):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(D.DataError, match=r"empty\.txt: the file is empty"):
        D.load_dataset(p, cache_dir=cache)


def test_non_utf8_file_names_path_and_offset(tmp_path, cache):
    p = tmp_path / "latin1.txt"
    p.write_bytes("abc\xe9def".encode("latin-1"))
    with pytest.raises(D.DataError, match=r"latin1\.txt: not valid UTF-8 text \(byte offset 3"):
        D.load_dataset(p, cache_dir=cache)


def test_corpus_too_short_for_block_size(tmp_path, cache):
    p = tmp_path / "short.txt"
    p.write_text("abcdefghijklmnopqrstuvwxyz" * 4)  # 104 tokens: 93 train, 11 val
    data, _ = D.load_dataset(p, "char", cache_dir=cache)
    rng = np.random.default_rng(0)
    data.get_batch("val", 2, 10, rng)  # 11 tokens are just enough for block_size 10
    with pytest.raises(D.DataError, match=r"val split .* has 11 tokens, but block_size=11 needs at least 12 "
                                          r"\(the corpus has 104 tokens, 10% go to val\)"):
        data.get_batch("val", 2, 11, rng)
    with pytest.raises(D.DataError, match=r"train split .* has 93 tokens, but block_size=100 needs at least 101"):
        data.check_block_size(100)
    with pytest.raises(D.DataError, match="val split"):
        data.check_block_size(50)
    data.check_block_size(10)


# ---------------------------------------------------------------- folders

def test_folder_sorted_recursive_skips_binary(tmp_path, cache):
    root = tmp_path / "corpus"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b" / "deep" / "z.txt").write_text("zzz\n")
    (root / "a.txt").write_text("aaa")  # no trailing newline: one is added
    (root / "b" / "c.md").write_text("ccc\n")
    (root / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (root / "latin1.txt").write_bytes(b"caf\xe9\n")
    (root / ".hidden").write_text("secret\n")
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "gone.txt").symlink_to(root / "deleted-target.txt")  # a broken link is skipped, not an error
    with pytest.warns(UserWarning, match=r"skipped 3 unreadable, binary or non-UTF-8 file\(s\): "
                                         r"gone.txt, img.png, latin1.txt"):
        data, tok = D.load_dataset(root, "char", cache_dir=cache)
    assert tok.decode(np.concatenate([data.train, data.val])) == "aaa\nccc\nzzz\n"
    assert data.skipped_files == 3
    with pytest.warns(UserWarning):
        assert D.read_corpus(root).files == ("a.txt", "b/c.md", "b/deep/z.txt")


def test_folder_without_text_is_an_error(tmp_path, cache):
    root = tmp_path / "bin"
    root.mkdir()
    with pytest.raises(D.DataError, match="no text"):
        D.load_dataset(root, cache_dir=cache)
    (root / "x.bin").write_bytes(b"\x00\x01\xff")
    (root / "empty.txt").write_text("")
    with pytest.warns(UserWarning), pytest.raises(D.DataError, match=r"1 empty text file\(s\), 1 unreadable, binary"):
        D.load_dataset(root, cache_dir=cache)


# ---------------------------------------------------------------- batches

def _data(n, seed=0):
    tokens = np.random.default_rng(seed).integers(0, 50, size=n).astype(np.uint16)
    k = int(n * 0.9)
    return D.TokenData(tokens[:k], tokens[k:], ByteTokenizer(), "test"), tokens


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 400), batch=st.integers(1, 8), block=st.integers(1, 16), seed=st.integers(0, 2**32 - 1),
       split=st.sampled_from(["train", "val"]))
def test_get_batch_windows(n, batch, block, seed, split):
    data, _ = _data(n)
    arr = data.split(split)
    if len(arr) < block + 1:
        with pytest.raises(D.DataError):
            data.get_batch(split, batch, block, np.random.default_rng(seed))
        return
    x, y = data.get_batch(split, batch, block, np.random.default_rng(seed))
    assert x.shape == y.shape == (batch, block) and x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    # Same draw as get_batch makes: every row is a window of the split, y one step ahead.
    starts = np.random.default_rng(seed).integers(0, len(arr) - block, size=batch)
    assert starts.min() >= 0 and starts.max() + block + 1 <= len(arr)
    for row, s in enumerate(starts):
        np.testing.assert_array_equal(x[row], arr[s:s + block])
        np.testing.assert_array_equal(y[row], arr[s + 1:s + block + 1])
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_get_batch_seeded_determinism_and_edges():
    data, _ = _data(1000)
    a = data.get_batch("train", 4, 8, np.random.default_rng(7))
    b = data.get_batch("train", 4, 8, np.random.default_rng(7))
    c = data.get_batch("train", 4, 8, np.random.default_rng(8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    small, tokens = _data(20)  # val has exactly 2 tokens: block_size 1 has one window
    x, y = small.get_batch("val", 3, 1, np.random.default_rng(0))
    assert (x == tokens[18]).all() and (y == tokens[19]).all()
    with pytest.raises(ValueError, match="split"):
        data.get_batch("test", 1, 1, np.random.default_rng(0))
    with pytest.raises(TypeError, match="Generator"):
        data.get_batch("train", 1, 1, 0)
    with pytest.raises(ValueError):
        data.get_batch("train", 0, 4, np.random.default_rng(0))


def test_get_batch_from_memmap(text_file, cache):
    data, tok = D.load_dataset(text_file, "char", cache_dir=cache)
    x, y = data.get_batch("train", 3, 16, np.random.default_rng(0))
    assert x.dtype == np.int64 and not isinstance(x, np.memmap)
    assert tok.decode(x[0])[1:] == tok.decode(y[0])[:-1] and tok.decode(x[0]) in TEXT


# ---------------------------------------------------------------- default corpus

def test_default_corpus_deterministic_nonempty_capped():
    a = D.default_corpus_text(max_bytes=30_000)
    assert a == D.default_corpus_text(max_bytes=30_000)
    assert 29_996 < len(a.encode("utf-8")) <= 30_000  # cut inside the last file, whole characters only
    assert a.startswith("# ==== ") and "def " in a
    assert D.default_corpus_text(max_bytes=60_000).startswith(a)


def test_default_corpus_full_size_and_files():
    corpus = D.default_corpus()
    size = len(corpus.text.encode("utf-8"))
    assert D.DEFAULT_CORPUS_BYTES == 4_000_000 and D.DEFAULT_CORPUS_BYTES - 4 < size <= D.DEFAULT_CORPUS_BYTES
    assert corpus.name == D.DEFAULT_CORPUS_NAME and "standard library" in D.DEFAULT_CORPUS_DESCRIPTION
    assert list(corpus.files) == sorted(corpus.files) and all(f.endswith(".py") for f in corpus.files)
    for f in D.default_corpus_files():
        parts = f[0].split("/")
        assert not {"test", "tests", "idle_test", "site-packages", "encodings"} & set(parts[:-1]), f
        assert not parts[-1].startswith("_sysconfigdata")
    with pytest.raises(ValueError):
        D.default_corpus(max_bytes=0)


def test_load_default_corpus(cache):
    data, tok = D.load_dataset(None, "byte", cache_dir=cache, max_bytes=20_000)
    assert data.source == D.DEFAULT_CORPUS_NAME and data.num_tokens == 20_000
    assert tok.decode(data.train).startswith("# ==== ")
    assert D.load_dataset(None, "byte", cache_dir=cache, max_bytes=20_000)[0].from_cache


def test_cache_files_are_not_private(text_file, cache):
    data, _ = D.load_dataset(text_file, "char", cache_dir=cache)
    umask = os.umask(0)
    os.umask(umask)
    assert data.cache_path.stat().st_mode & 0o777 == 0o666 & ~umask
