"""Byte-level BPE: ids equal to tiktoken's and HF tokenizers' for vocabularies trained here, the
kernels equal to their plain-Python references, round trips, special tokens, bad input.

tiktoken and tokenizers are built in memory from our own vocabularies (no download): tiktoken's
Encoding takes our bytes -> id map as its ranks (training gives ids in merge order), HF's BPE
model takes the same vocabulary and merges in GPT-2's byte-to-unicode spelling."""
import json
import random

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tinygrad_lm.data import default_corpus_text
from tinygrad_lm.tokenizers import BPETokenizer, tokenizer_from_dict
from tinygrad_lm.tokenizers.bpe import TEXT_PATTERN_IDS, bpe_merge_reference
from tinygrad_lm.tokenizers.bpe_train import count_chunks, learn_merges, train_reference
from tinygrad_lm.tokenizers.formats import hf_regex
from tinygrad_lm.tokenizers.patterns import GPT2, GPT4, PATTERNS, blocks, resolve_pattern

tiktoken = pytest.importorskip("tiktoken")
hf = pytest.importorskip("tokenizers")
from tokenizers import decoders, models, pre_tokenizers  # noqa: E402

EOT = "<|endoftext|>"

# Text the vocabularies learn from: Python source (the default corpus) and many scripts, so that
# merges exist for multi-byte characters too.
WORLD = ("Ünïcödé façade naïve — 日本語のテキスト 中文文本 한국어 텍스트 Ελληνικά русский текст עברית العربية "
         "😀👍🏽 👨‍👩‍👧 e\u0301 n\u0303 3.14159 2024-12-01 1,234,567 ½ ² Ⅷ ٣٤ I'm we'll they've it's DON'T\r\n"
         "\t\tindented  text   with    spaces\n\n\nnew paragraphs\u00a0nbsp\u3000ideographic space\n")


@pytest.fixture(scope="module")
def corpus():
    return default_corpus_text(120_000) + WORLD * 40


@pytest.fixture(scope="module", params=["gpt2", "gpt4", "digits"])
def trained(request, corpus):
    """(our tokenizer, tiktoken Encoding, HF Tokenizer), all with the same vocabulary."""
    tok = BPETokenizer.train(corpus, 1200, pattern=request.param, progress=False)
    return tok, tiktoken_of(tok), hf_of(tok)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (HF's ByteLevel spells tokens with it)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


def tiktoken_of(tok: BPETokenizer):
    return tiktoken.Encoding(f"ours-{tok.pattern_name}", pat_str=tok.pattern, mergeable_ranks=tok.vocab,
                             special_tokens=tok.special_tokens)


def hf_of(tok: BPETokenizer):
    """HF tokenizers with the same vocabulary. Its pre-tokenizers are its own where it has them
    (GPT-2's regex is ByteLevel's; "digits" is Digits then ByteLevel, as SmolLM2's tokenizer.json):
    that checks our pattern strings against HF's definitions, not only against themselves."""
    u = bytes_to_unicode()
    spell = lambda b: "".join(u[x] for x in b)  # noqa: E731
    model = models.BPE(vocab={spell(b): i for b, i in tok.vocab.items()},
                       merges=[(spell(a), spell(b)) for a, b in tok.merges])
    out = hf.Tokenizer(model)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if tok.pattern_name == "gpt2":
        out.pre_tokenizer = byte_level
    elif tok.pattern_name == "digits":
        out.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        out.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(hf.Regex(hf_regex(tok.pattern)), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    out.decoder = decoders.ByteLevel()
    out.add_special_tokens([hf.AddedToken(s, special=True, normalized=False) for s in tok.special_tokens])
    assert out.token_to_id(EOT) == tok.token_id(EOT)
    return out


# Pieces that pre-tokenizers treat specially, mixed with arbitrary characters of every plane.
PIECES = [" ", "  ", "   ", "\n", "\r\n", "\r", "\n\n", "\t", " \n ", "\u00a0", "\u3000", "\u2028", "\x85", "\x1c",
          "'s", "'S", "'t", "'re", "'RE", "'ve", "'m", "'ll", "'Ll", "'d", "'D", "'ſ", "'x", "''",
          "0", "7", "12", "1234567", "3.14", " 42", "٣", "²", "Ⅷ", "½", "e\u0301", "\u0301", "😀", "👍🏽", "👨‍👩‍👧",
          "日本語", "中文", "한국어", "Ελληνικά", "ﬁ", "Ünï", "def", " the", "(self", "):\n", "    return", EOT]
# Every plane, but only characters assigned in Python's Unicode database (14.0 for 3.11): each
# regex engine has its own Unicode version, and a character assigned since (U+32BB4, CJK extension J)
# is a letter to the regex package (Unicode 17) but "other" to tiktoken's and HF's engines, which
# then cut the text elsewhere. No lone surrogates (Cs): UTF-8 has none, and the peers reject them.
chars = st.characters(exclude_categories=("Cs", "Cn"))
texts = st.lists(st.one_of(st.sampled_from(PIECES), st.text(chars, max_size=4)), max_size=24).map("".join)


def ordinary(text: str) -> str:
    return text.replace(EOT, "")


# Where the patterns differ from naive versions of themselves.
EDGES = ["a  3", "x 3", "a\n\n3", "999999999", "1234567890", "x\n  ", "  \n", "\n\n\n", "a \r\n\r\n b",
         "'ſ'S'LL'll'Ve", "it's", "'''", "\t\tfoo", "(self):\n    return", "\u00a0x", "x\x1c y", "ab!!\n\ncd",
         "e\u0301\u0301", "日本語 text", "", " ", "😀😀 😀", "x\x85\u2028y"]


def edge_cases(test):
    for text in EDGES:
        test = example(text=text)(test)
    return test


# ---- the same ids as tiktoken and HF tokenizers ---------------------------------------------------

@settings(max_examples=60)
@edge_cases
@given(text=texts)
def test_ids_equal_tiktoken_and_hf(trained, text):
    tok, tt, hft = trained
    ids = tok.encode(text, allowed_special="all")
    assert ids == tt.encode(text, allowed_special="all")
    assert ids == hft.encode(text, add_special_tokens=False).ids
    plain = ordinary(text)
    assert tok.encode(plain) == tt.encode_ordinary(plain)
    assert tok.decode(ids) == text
    assert tok.decode(ids) == hft.decode(ids, skip_special_tokens=False)


def test_ids_equal_on_real_text(trained, corpus):
    tok, tt, hft = trained
    text = default_corpus_text(400_000)[-100_000:] + WORLD    # Python source not trained on
    ids = tok.encode(text)
    assert ids == tt.encode_ordinary(text)
    assert ids == hft.encode(text, add_special_tokens=False).ids
    assert tok.encode_array(text, dtype=np.uint16).tolist() == ids
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2.5   # the merges compress what they were trained on


@settings(max_examples=60)
@edge_cases
@given(text=st.one_of(texts, st.text()))
def test_scanners_split_as_the_regex(text):
    # the kernel's hand-written scanners cut exactly where regex.findall does (lone surrogates too)
    import regex

    from tinygrad_lm.kernels.cpu import bpe_text
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    for name in ("gpt2", "gpt4", "digits"):
        ends = bpe_text.split_text(cps, bpe_text.char_classes(), TEXT_PATTERN_IDS[name]).tolist()
        assert [text[a:b] for a, b in zip(ends, ends[1:])] == regex.findall(PATTERNS[name], text), name


@settings(max_examples=30)
@edge_cases
@given(text=texts)
def test_named_pattern_equals_same_regex_given_as_string(trained, text):
    # the one-pass kernel (a name) and the regex-package path (an equivalent regex string) agree
    tok = trained[0]
    as_regex = BPETokenizer(tok.vocab, tok.merges, f"(?:{tok.pattern})", tok.special_tokens)
    assert as_regex.pattern_name is None and as_regex._text_pattern is None and tok._text_pattern is not None
    assert as_regex.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    plain = ordinary(text)
    batch = [plain, text, plain]
    expected = [tok.encode(t, allowed_special="all") for t in batch]
    assert tok.encode_batch(batch, allowed_special="all") == as_regex.encode_batch(batch, "all") == expected
    assert tok.encode_batch([plain, plain]) == [tok.encode(plain)] * 2


def test_blocks_cut_only_after_a_newline_between_non_spaces():
    assert list(blocks("a\nb\nc\nd", 1)) == ["a\n", "b\n", "c\n", "d"]
    assert list(blocks("a\n\nb \n c\r\nd", 1)) == ["a\n\nb \n c\r\nd"]   # "\n\n", " \n ", "\r\n": no cut
    assert list(blocks("abc", 1)) == ["abc"] and list(blocks("", 1)) == [""]


@settings(max_examples=30)
@edge_cases
@given(text=texts)
def test_encoding_in_blocks_gives_the_same_ids(trained, text):
    # long texts are encoded a block at a time, cut where the pattern cuts anyway: blocks of a few
    # characters here, so that the cuts fall everywhere
    from tinygrad_lm.tokenizers import bpe
    tok = trained[0]
    whole = tok.encode(text, allowed_special="all")
    size = bpe.ENCODE_BLOCK_CHARS
    try:
        bpe.ENCODE_BLOCK_CHARS = 4
        assert tok.encode(text, allowed_special="all") == whole
        assert tok.encode_batch([text, "", text], allowed_special="all") == [whole, [], whole]
    finally:
        bpe.ENCODE_BLOCK_CHARS = size


def test_patterns_are_the_reference_strings():
    # tiktoken's own cl100k_base pattern (read from its source: cl100k_base() would download the
    # ranks); GPT-2's as tiktoken's comment and HF's ByteLevel have it
    import inspect

    from tiktoken_ext import openai_public
    assert f'r"""{GPT4}"""' in inspect.getsource(openai_public.cl100k_base)
    assert GPT2 == r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    assert PATTERNS["smollm"] == PATTERNS["digits"]


# ---- round trips ------------------------------------------------------------------------------------

@given(text=st.text())   # lone surrogates included
def test_round_trip_any_string(trained, text):
    tok = trained[0]
    ids = tok.encode(text, allowed_special="none")
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids, errors="surrogatepass") == text
    assert tok.decode_bytes(ids) == text.encode("utf-8", "surrogatepass")
    assert tok.encode_array(text, allowed_special="none").tolist() == ids


def test_decode_invalid_utf8_gives_replacement(trained):
    tok = trained[0]
    half = [tok.vocab[b"\xc3"]]
    assert tok.decode(half) == "\ufffd"
    assert tok.decode(half + tok.encode("x") + [tok.token_id(EOT)]) == "\ufffdx" + EOT
    assert tok.id_to_bytes(tok.token_id(EOT)) == EOT.encode()


def test_encode_batch_and_cache(trained):
    tok = trained[0]
    texts = ["hello world", "", "hello world", "日本語 😀"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    tok.encode("a rarely seen wordzzq")
    assert tok.encode("a rarely seen wordzzq") == tok.encode("a rarely seen wordzzq")


# ---- kernels equal their references ---------------------------------------------------------------

small_texts = st.text(st.sampled_from("aab c\né😀1"), max_size=300)


@settings(max_examples=40)
@given(text=small_texts, pattern=st.sampled_from(["none", "gpt2", "gpt4", "digits"]), n_new=st.integers(1, 40))
def test_trainer_kernel_equals_reference(text, pattern, n_new):
    counts = count_chunks(text, pattern)
    assert learn_merges(counts, n_new).tolist() == [list(m) for m in train_reference(counts, n_new)]


@settings(max_examples=40)
@edge_cases
@given(text=st.one_of(texts, st.text()))
def test_counting_kernel_equals_regex_counts(text):
    # named patterns count chunks with the kernel's scanner, block by block; here in blocks of a
    # few characters, so the cuts between blocks are exercised too
    from collections import Counter

    from tinygrad_lm.tokenizers import bpe_train
    from tinygrad_lm.tokenizers.patterns import make_splitter
    size = bpe_train.BLOCK_CHARS
    try:
        bpe_train.BLOCK_CHARS = 3
        for name in ("gpt2", "gpt4", "digits"):
            expected = Counter(make_splitter(PATTERNS[name], None)(text))   # the regex package's chunks
            assert count_chunks(text, name) == expected, name
    finally:
        bpe_train.BLOCK_CHARS = size
    assert "".join(blocks(text, 2)) == text


def test_trainer_kernel_equals_reference_on_real_text():
    counts = count_chunks(default_corpus_text(30_000), "gpt4")
    assert learn_merges(counts, 120).tolist() == [list(m) for m in train_reference(counts, 120)]


@pytest.fixture(scope="module")
def raw_bytes_tok():
    return BPETokenizer.train(("abracadabra " * 30) + "aaaaaaaaaaaa bbbb 😀😀😀 ééé", 290, pattern="none",
                              special_tokens=(), progress=False)


@settings(max_examples=40)
@given(text=st.text(st.sampled_from("abrcd é😀"), max_size=400))
def test_encode_kernel_equals_reference(raw_bytes_tok, text):
    # pattern "none": the whole text is one chunk, so long texts take the kernel's heap path
    tok = raw_bytes_tok
    ranks = {(tok.vocab[a], tok.vocab[b]): r for r, (a, b) in enumerate(tok.merges)}
    merged = [tok.vocab[a + b] for a, b in tok.merges]
    expected = bpe_merge_reference(list(text.encode()), ranks, merged) if text else []
    assert tok.encode(text) == expected


def test_minbpe_known_answer():
    tok = BPETokenizer.train("aaabdaaabac", 259, pattern="none", special_tokens=(), progress=False)
    assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
    assert tok.vocab_size == 259 and tok.special_tokens == {}


def test_training_is_deterministic_and_files_equal_text(tmp_path, corpus):
    text = corpus[:40_000]
    a = BPETokenizer.train(text, 700, progress=False)
    b = BPETokenizer.train(text, 700, progress=False)
    assert a.merges == b.merges and a.fingerprint() == b.fingerprint()
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    assert BPETokenizer.train([tmp_path / "one.txt"], 700, progress=False) == a
    # the tie-break: equal counts go to the smallest pair of ids, here (a, b) before (b, c)
    tie = BPETokenizer.train("bcab", 257, pattern="none", special_tokens=(), progress=False)
    assert tie.merges == [(b"a", b"b")]


def test_training_layout_and_progress(capsys):
    tok = BPETokenizer.train(WORLD, 270, special_tokens=("<|a|>", "<|b|>"), progress=True)
    assert [tok.vocab[bytes([i])] for i in range(256)] == list(range(256))
    assert sorted(tok.vocab.values()) == list(range(268))
    assert tok.special_tokens == {"<|a|>": 268, "<|b|>": 269} and tok.vocab_size == 270
    assert "bpe merges" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="no pairs left"):
        small = BPETokenizer.train("abab", 300, special_tokens=(), progress=False)
    assert small.vocab_size < 300


def test_special_tokens_are_not_trained_on():
    tok = BPETokenizer.train(("xy" + EOT) * 50, 258, pattern="none", progress=False)
    assert tok.merges == [(b"x", b"y")]


# ---- ids that are not in byte order (GPT-2, SmolLM2) -----------------------------------------------

def test_permuted_ids(trained):
    tok = trained[0]
    perm = list(range(tok.vocab_size))
    random.Random(0).shuffle(perm)
    vocab = {b: perm[i] for b, i in tok.vocab.items()}
    specials = {s: perm[i] for s, i in tok.special_tokens.items()}
    other = BPETokenizer(vocab, tok.merges, tok.pattern_name, specials)
    text = WORLD + EOT + " def f(x):\n    return x  # 1234"
    ids = tok.encode(text, allowed_special="all")
    assert other.encode(text, allowed_special="all") == [perm[i] for i in ids]
    assert other.decode(other.encode(text, allowed_special="all")) == text


# ---- special tokens -----------------------------------------------------------------------------

def test_allowed_special():
    tok = BPETokenizer.train(WORLD, 280, special_tokens=(EOT, "<|pad|>"), progress=False)
    eot, pad = tok.token_id(EOT), tok.token_id("<|pad|>")
    text = f"hello{EOT}world<|pad|>"
    with pytest.raises(ValueError, match=r"contains the special token '<\|endoftext\|>'"):
        tok.encode(text)
    with pytest.raises(ValueError, match="special token"):
        tok.encode(text, allowed_special={EOT})        # <|pad|> is still not allowed
    ids = tok.encode(text, allowed_special="all")
    assert ids == tok.encode("hello") + [eot] + tok.encode("world") + [pad]
    plain = tok.encode(text, allowed_special="none")
    assert eot not in plain and pad not in plain and tok.decode(plain) == text
    assert tok.encode(f"a{EOT}", allowed_special={EOT}) == tok.encode("a") + [eot]
    assert tok.encode_array(text, allowed_special="all").tolist() == ids
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special="some")
    # the longest special wins where two start at one place
    both = BPETokenizer(tok.vocab, tok.merges, "gpt4", {"<|a|>": 300, "<|a|>x": 301})
    assert both.encode("<|a|>x<|a|>", allowed_special="all") == [301, 300]


# ---- saving inside checkpoints ---------------------------------------------------------------------

def test_save_picks_a_standard_format(trained, tmp_path):
    from tinygrad_lm.tokenizers import load_tokenizer
    tok = trained[0]
    for name in ("tok.json", "tok.tiktoken", "gpt2_folder"):
        tok.save(tmp_path / name)
        assert load_tokenizer(tmp_path / name) == tok, name
    assert "model" in json.loads((tmp_path / "tok.json").read_text())   # HF tokenizer.json layout


def test_to_dict_round_trip(trained):
    tok = trained[0]
    again = tokenizer_from_dict(tok.to_dict())
    assert isinstance(again, BPETokenizer) and again == tok
    assert again.fingerprint() == tok.fingerprint() and tok.fingerprint().startswith("bpe-")
    assert again.pattern_name == tok.pattern_name and again.pattern == tok.pattern
    same = BPETokenizer(tok.vocab, tok.merges, tok.pattern, tok.special_tokens)   # a name's regex, unnamed
    assert same.pattern_name is None and BPETokenizer.from_dict(same.to_dict()).pattern_name is None
    custom = BPETokenizer(tok.vocab, tok.merges, r"\w+|\s+", tok.special_tokens)
    again = BPETokenizer.from_dict(custom.to_dict())
    assert again.pattern == r"\w+|\s+" and again.pattern_name is None and again == custom


# ---- patterns ---------------------------------------------------------------------------------------

def test_pattern_names_and_custom_regex():
    assert resolve_pattern("gpt4") == (GPT4, "gpt4")
    assert resolve_pattern(r"\w+") == (r"\w+", None)
    with pytest.raises(ValueError, match="unknown pre-tokenizer pattern 'gpt3'; choose one of gpt2, gpt4"):
        resolve_pattern("gpt3")
    with pytest.raises(ValueError, match="invalid pre-tokenizer regex"):
        resolve_pattern("(")
    # a custom regex that skips text keeps the skipped text as chunks of its own
    tok = BPETokenizer.train("ab, cd!! ab", 260, pattern=r"\w+", special_tokens=(), progress=False)
    assert tok.decode(tok.encode("ab, cd!! ab")) == "ab, cd!! ab"


# ---- bad input -------------------------------------------------------------------------------------

def test_bad_training_input(tmp_path):
    with pytest.raises(ValueError, match="unknown pre-tokenizer pattern 'bogus'"):
        BPETokenizer.train("text", 300, pattern="bogus", progress=False)
    with pytest.raises(ValueError, match="vocab_size 256 is too small.*at least 257"):
        BPETokenizer.train("text", 256, progress=False)
    with pytest.raises(ValueError, match="train on a str of text or a list of file paths"):
        BPETokenizer.train(b"bytes", 300, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BPETokenizer.train([tmp_path / "missing.txt"], 300, progress=False)
    (tmp_path / "bad.txt").write_bytes(b"ok \xff")
    with pytest.raises(ValueError, match="bad.txt: not valid UTF-8"):
        BPETokenizer.train([tmp_path / "bad.txt"], 300, progress=False)


def test_bad_ids_and_vocab(trained):
    tok = trained[0]
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="not in this vocabulary"):
        tok.id_to_bytes(tok.vocab_size)
    vocab = {bytes([i]): i for i in range(256)}
    # a byte without a token (SmolLM2 lacks 21) is dropped before merging, as HF and llama.cpp do
    holey = BPETokenizer({**{b: i for b, i in vocab.items() if b != b"\x00"}, b"!!": 256}, [(b"!", b"!")],
                         pattern="gpt2")
    assert holey.encode("!\x00!") == [256] and holey.encode("\x00") == []   # "!\x00!" is one chunk
    assert BPETokenizer(holey.vocab, holey.merges, pattern="\\s+|\\S+").encode("!\x00!") == [256]  # regex path
    with pytest.raises(ValueError, match=r"b'ab' is not in the vocab"):
        BPETokenizer(vocab, [(b"a", b"b")])
    with pytest.raises(ValueError, match="must be a non-negative int, got -1"):
        BPETokenizer({**vocab, b"ab": -1}, [])
    with pytest.raises(ValueError, match="used twice"):
        BPETokenizer({**vocab, b"ab": 5}, [])
    with pytest.raises(ValueError, match="already a vocab token"):
        BPETokenizer(vocab, [], special_tokens={EOT: 7})
    with pytest.raises(ValueError, match="nearly\\) contiguous"):
        BPETokenizer(vocab, [], special_tokens={EOT: 10**9})      # a file must not make us allocate that
    holes = BPETokenizer(vocab, [], special_tokens={EOT: 300})   # ids 256..299 belong to no token
    assert holes.vocab_size == 301
    with pytest.raises(ValueError, match="not in this vocabulary: \\[299\\]"):
        holes.decode([299])
