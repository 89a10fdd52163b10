"""Tokenizers: round trips (hypothesis), save/load, unknown characters, special tokens."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinygrad_lm.tokenizers import (ByteTokenizer, CharTokenizer, UnknownCharactersError, load_tokenizer,
                                    make_tokenizer, token_dtype, tokenizer_from_dict)

# st.text() draws from every code point, lone surrogates (category Cs) included.
any_text = st.text()
valid_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)))


# ---- char ----

@given(any_text.filter(bool))
def test_char_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert isinstance(ids, list) and len(ids) == len(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.uint16)) == text


@given(any_text.filter(bool), any_text)
def test_char_encode_subset_or_error(corpus, text):
    tok = CharTokenizer.from_text(corpus)
    missing = sorted(set(text) - set(corpus))
    if missing:
        with pytest.raises(UnknownCharactersError) as info:
            tok.encode(text)
        assert info.value.chars == missing
    else:
        assert tok.decode(tok.encode(text)) == text


def test_char_vocab_is_sorted_unique_chars():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == sorted(set("hello world"))
    assert tok.vocab_size == 8
    assert tok.encode("hello") == [3, 2, 4, 4, 5]


def test_char_unknown_message_lists_sorted_reprs():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"^characters not in the vocabulary: 'é', '😀'$"):
        tok.encode("a😀béé")


def test_char_constructor_keeps_given_order():
    tok = CharTokenizer(["z", "a", "\n"])
    assert tok.encode("az\n") == [1, 0, 2]
    assert tok.decode([2, 0, 1]) == "\nza"


@pytest.mark.parametrize("chars", [[], ["ab"], ["a", "a"], [1]])
def test_char_constructor_rejects_bad_vocab(chars):
    with pytest.raises(ValueError):
        CharTokenizer(chars)


def test_char_from_empty_text_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


# ---- byte ----

@given(valid_text)
def test_byte_round_trip_valid_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@given(any_text)
def test_byte_never_fails_and_surrogatepass_round_trips(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids, errors="surrogatepass") == text
    tok.decode(ids).encode("utf-8")  # default decode is always valid, printable UTF-8


def test_byte_lone_surrogate_decodes_to_replacement_by_default():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffd\ufffd\ufffdb"


@given(st.lists(st.integers(0, 256)))
def test_byte_decode_of_arbitrary_ids_never_fails(ids):
    text = ByteTokenizer().decode(ids)
    assert isinstance(text, str)
    text.encode("utf-8")


def test_byte_emoji_and_multibyte():
    tok = ByteTokenizer()
    assert tok.encode("é😀") == [0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80]
    assert tok.decode([0xC3, 0xA9, 0xF0, 0x9F, 0x98, 0x80]) == "é😀"


def test_byte_special_tokens():
    tok = ByteTokenizer()
    assert tok.vocab_size == 257 and tok.token_id("<|endoftext|>") == 256
    text = "a<|endoftext|>b"
    assert tok.encode(text) == list(text.encode())  # not allowed: plain characters
    assert tok.encode(text, allowed_special="all") == [97, 256, 98]
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == [97, 256, 98]
    assert tok.decode([97, 256, 98]) == text
    assert tok.decode_bytes([97, 256, 98]) == text.encode()
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})
    with pytest.raises(ValueError):
        tok.encode(text, allowed_special="<|endoftext|>")  # a bare string is ambiguous
    with pytest.raises(ValueError):
        tok.token_id("<|nope|>")


def test_byte_configurable_special_tokens_longest_match_first():
    tok = ByteTokenizer(["<a>", "<a>b", "<pad>"])
    assert tok.vocab_size == 259
    assert tok.encode("<a>b<a><pad>", allowed_special="all") == [257, 256, 258]
    assert tok.encode("<a>b<a><pad>", allowed_special=["<pad>"]) == list(b"<a>b<a>") + [258]
    assert tok.decode([257, 256, 258]) == "<a>b<a><pad>"
    assert ByteTokenizer([]).vocab_size == 256


@given(st.lists(st.sampled_from(["x", "é", "<|endoftext|>", "<|pad|>", "\n"])))
def test_byte_special_round_trip(parts):
    tok = ByteTokenizer(["<|endoftext|>", "<|pad|>"])
    text = "".join(parts)
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_byte_decode_split_by_special_does_not_merge_partial_chars():
    tok = ByteTokenizer()
    # 0xC3 is half of 'é': it becomes U+FFFD instead of gluing to the bytes after the special.
    assert tok.decode([0xC3, 256, 0xA9]) == "\ufffd<|endoftext|>\ufffd"


@pytest.mark.parametrize("specials", [[""], ["<x>", "<x>"], [None]])
def test_byte_rejects_bad_special_tokens(specials):
    with pytest.raises(ValueError):
        ByteTokenizer(specials)


# ---- shared ----

@pytest.mark.parametrize("tok", [CharTokenizer.from_text("abc"), ByteTokenizer()])
@pytest.mark.parametrize("ids", [[-1], [10**6], [[1, 2]], [0.5]])
def test_decode_rejects_bad_ids(tok, ids):
    with pytest.raises(ValueError):
        tok.decode(ids)


@pytest.mark.parametrize("tok", [CharTokenizer.from_text("abc"), ByteTokenizer()])
def test_empty_round_trip(tok):
    assert tok.encode("") == [] and tok.decode([]) == "" and tok.decode(np.zeros(0, np.int32)) == ""


@pytest.mark.parametrize("tok", [CharTokenizer.from_text("héllo\n😀\ud800\t\"\\"), ByteTokenizer(["<|endoftext|>", "<é>"])])
def test_save_load_round_trip(tmp_path, tok):
    path = tmp_path / "tok.json"
    tok.save(path)
    json.loads(path.read_text(encoding="ascii"))  # plain ASCII JSON on disk
    loaded = load_tokenizer(path)
    assert type(loaded) is type(tok) and loaded == tok
    assert loaded.fingerprint() == tok.fingerprint()
    assert tokenizer_from_dict(tok.to_dict()) == tok
    text = "héllo😀" if tok.kind == "char" else "any text ✓"
    assert loaded.encode(text) == tok.encode(text)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_tokenizer(tmp_path / "nothere.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)
    bad.write_text('{"kind": "wordpiece"}')
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)


def test_fingerprint_is_stable_and_discriminating():
    # Golden values: these key on-disk caches, so they must not drift between versions.
    assert CharTokenizer.from_text("hello world").fingerprint() == "char-c5ea10958d87be1f"
    assert ByteTokenizer().fingerprint() == "byte-4c5e61578c194823"
    assert CharTokenizer.from_text("abc").fingerprint() != CharTokenizer.from_text("abd").fingerprint()
    assert CharTokenizer(["a", "b"]).fingerprint() != CharTokenizer(["b", "a"]).fingerprint()
    assert ByteTokenizer().fingerprint() != ByteTokenizer([]).fingerprint()
    assert CharTokenizer.from_text("ab").fingerprint().startswith("char-")


def test_make_tokenizer():
    assert make_tokenizer("char", "ba").chars == ["a", "b"]
    assert make_tokenizer("byte") == ByteTokenizer()
    assert make_tokenizer("byte", special_tokens=["<s>"]).special_tokens == ["<s>"]
    with pytest.raises(ValueError, match="char, byte, bpe"):
        make_tokenizer("wordpiece", "text")
    with pytest.raises(ValueError):
        make_tokenizer("char")


def test_encode_array_dtype_and_token_dtype():
    tok = CharTokenizer.from_text("abc")
    arr = tok.encode_array("cab", dtype=np.uint16)
    assert arr.dtype == np.uint16 and arr.tolist() == [2, 0, 1]
    assert ByteTokenizer().encode_array("a", dtype=np.uint16).dtype == np.uint16
    assert token_dtype(256) == np.uint16 and token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


@settings(max_examples=20)
@given(st.text(min_size=1, alphabet=st.characters(min_codepoint=0x10000)))
def test_char_astral_plane(text):
    tok = CharTokenizer.from_text(text + "a")
    assert tok.decode(tok.encode(text)) == text
