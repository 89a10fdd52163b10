"""`tinygrad-lm tokenizer train|encode` and `train --tokenizer bpe`, in-process through cli.main."""
import json
import math
import re

import pytest

from tinygrad_lm import cli
from tinygrad_lm.checkpoint import load_checkpoint
from tinygrad_lm.tokenizers import BPETokenizer, load_tokenizer

TEXT = ("First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. "
        "You are all resolved rather to die than to famish? Café, naïve, 日本語 🙂 1234567.\n") * 40
ERROR = "tinygrad-lm: error:"


@pytest.fixture
def main(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(tmp_path / "cache"))
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")

    def call(*args):
        code = cli.main([str(a) for a in args])
        return code, *capsys.readouterr()

    return call


@pytest.mark.parametrize("out", ["tok.json", "tok.tiktoken", "tokdir"])
def test_tokenizer_train_writes_a_loadable_file(main, tmp_path, out):
    code, stdout, err = main("tokenizer", "train", "--data", "input.txt", "--vocab-size", 300, "--out", out, "--quiet")
    assert code == 0, err
    m = re.search(r"trained a BPE of 300 tokens \(pattern gpt4\) on ([\d,]+) bytes .* as ([\d,]+) tokens", stdout)
    assert m, stdout
    n_bytes, n_tokens = (int(g.replace(",", "")) for g in m.groups())
    assert n_bytes == len(TEXT.encode()) and n_tokens < n_bytes
    tok = load_tokenizer(tmp_path / out)
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300
    assert len(tok.encode(TEXT)) == n_tokens and tok.decode(tok.encode(TEXT)) == TEXT


def test_tokenizer_encode_shows_the_pieces(main, tmp_path):
    assert main("tokenizer", "train", "--data", "input.txt", "--vocab-size", 350, "--out", "tok.json", "--quiet")[0] == 0
    text = "Before we speak, 日本<|endoftext|>"
    code, out, err = main("tokenizer", "encode", "--tokenizer", "tok.json", text)
    assert code == 0, err
    pieces, ids, summary = out.splitlines()
    tok = load_tokenizer(tmp_path / "tok.json")
    want = tok.encode(text, allowed_special="all")
    assert [int(i) for i in ids.split()] == want and len(want) < len(text.encode())
    assert pieces == "".join(f"[{tok.id_to_bytes(i).decode()}]" for i in want)  # every piece here is whole UTF-8
    assert pieces.endswith("[<|endoftext|>]")
    assert summary == f"{len(want)} tokens, {len(text.encode())} bytes"
    # a token that is part of a character shows as its bytes
    code, out, err = main("tokenizer", "encode", "--tokenizer", "tok.json", "\U0001F600")
    assert code == 0 and out.splitlines()[0] == "[<f0>][<9f>][<98>][<80>]", out


@pytest.mark.parametrize("args,fragment", [
    (("tokenizer", "train", "--data", "input.txt", "--vocab-size", 100, "--out", "t.json"), "vocab_size 100"),
    (("tokenizer", "train", "--data", "input.txt", "--pattern", "gpt5", "--out", "t.json"), "gpt5"),
    (("tokenizer", "train", "--data", "missing.txt", "--out", "t.json"), "missing.txt"),
    (("tokenizer", "encode", "--tokenizer", "input.txt", "x"), "input.txt"),
    (("tokenizer", "encode", "--tokenizer", "nowhere.json", "x"), "nowhere.json"),
    (("tokenizer",), "train, encode"),
])
def test_tokenizer_bad_input(main, args, fragment):
    code, out, err = main(*args)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(ERROR) and fragment in lines[0], err


def test_train_with_a_bpe_tokenizer(main, tmp_path):
    small = ("--data", "input.txt", "--tokenizer", "bpe", "--vocab_size", 320, "--n_layer", 1, "--n_embd", 16,
             "--n_head", 2, "--block_size", 8, "--batch_size", 4, "--eval_iters", 1, "--max_iters", 2,
             "--quiet", "--sample_tokens", 10)
    code, out, err = main("train", *small, "--out", "a")
    assert code == 0, err
    assert "vocab 320;" in out
    tok = load_checkpoint(tmp_path / "a")["meta"]["tokenizer"]
    assert tok["kind"] == "bpe"
    cached = list((tmp_path / "cache" / "tokenizers").glob("bpe-*.json"))
    assert len(cached) == 1  # the second run below reuses it
    cached[0].write_text(cached[0].read_text())  # (same content; a second training would rewrite the file)
    mtime = cached[0].stat().st_mtime_ns
    code, out, err = main("train", *small, "--out", "b")
    assert code == 0, err
    assert cached[0].stat().st_mtime_ns == mtime
    assert load_checkpoint(tmp_path / "b")["meta"]["tokenizer"] == tok  # same data, same tokenizer

    code, out, err = main("eval", "--ckpt", "a", "--data", "input.txt", "--quiet")
    assert code == 0, err
    n_bytes = int(re.search(r"split val, (\S+) bytes", out)[1].replace(",", ""))
    code, out, err = main("eval", "--ckpt", "a", "--data", "input.txt", "--quiet", "--json")
    r = json.loads(out)
    assert n_bytes > r["tokens"]  # a BPE token spans several bytes
    assert r["bpb"] == pytest.approx(r["loss"] * r["tokens"] / n_bytes / math.log(2), rel=1e-9)
    code, out, err = main("generate", "--ckpt", "a", "--prompt", "Café 🙂", "--max-new-tokens", 5, "--seed", 0)
    assert code == 0, err and out.startswith("Café 🙂")


def test_training_text_with_a_special_tokens_spelling(tmp_path):
    """A corpus may spell <|endoftext|>: for training data it is text (as with the byte tokenizer)."""
    from tinygrad_lm.data import load_dataset
    from tinygrad_lm.tokenizers import make_tokenizer
    text = TEXT + "<|endoftext|>" + TEXT
    (tmp_path / "eot.txt").write_text(text, encoding="utf-8")
    data, tok = load_dataset(tmp_path / "eot.txt", "bpe", cache_dir=tmp_path / "cache", bpe_vocab_size=300)
    ids = list(data.train) + list(data.val)
    assert tok.decode(ids) == text and tok.token_id("<|endoftext|>") not in ids
    made = make_tokenizer("bpe", TEXT, vocab_size=300)
    assert made.to_dict() == BPETokenizer.train(TEXT, 300, progress=False).to_dict()
    with pytest.raises(ValueError, match="built from a text"):
        make_tokenizer("bpe")
