"""`tinygrad-lm` end to end, in subprocesses: train -> generate / eval / info / --resume, and
every kind of bad input -> exit 2 with one line "tinygrad-lm: error: ..." and no traceback.

Each subprocess costs about a second (Python + NumPy + Numba imports), so the model is tiny,
runs are a few iterations, and the many small validation cases run in-process via main()."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygrad_lm import cli
from tinygrad_lm.checkpoint import load_checkpoint, save_checkpoint

SCRIPT = Path(sys.executable).parent / "tinygrad-lm"  # the installed console script
TEXT = "the quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs!\n" * 30
SMALL = ["--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--block_size", "8", "--batch_size", "4",
         "--eval_interval", "2", "--eval_iters", "2", "--quiet", "--dropout", "0.1", "--log_interval", "1"]
ERROR = "tinygrad-lm: error:"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "input.txt").write_text(TEXT)
    return d


@pytest.fixture(scope="module")
def env(work):
    e = dict(os.environ, TINYGRAD_LM_CACHE=str(work / "cache"))
    e.pop("PYTHONWARNINGS", None)  # what a user sees: Python's default warning filters
    return e


def tlm(work, env, *args, script=False, timeout=120):
    cmd = [str(SCRIPT)] if script else [sys.executable, "-m", "tinygrad_lm.cli"]
    return subprocess.run(cmd + [str(a) for a in args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=timeout)


def assert_usage_error(res, *fragments):
    """Exit 2, exactly one line on stderr starting 'tinygrad-lm: error:', naming the fragments."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(ERROR)
    for f in fragments:
        assert str(f) in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run(work, env):
    """A 4-iteration run through the installed `tinygrad-lm` script."""
    res = tlm(work, env, "train", "--data", "input.txt", "--max_iters", 4, *SMALL, "--sample_tokens", 20,
              "--out", "tmp/run", script=True)
    assert res.returncode == 0, res.stderr
    return work / "tmp" / "run", res


def test_script_is_installed():
    assert SCRIPT.exists(), f"no console script at {SCRIPT}; pip install -e ."


def test_train_smoke(run):
    out, res = run
    # --quiet: no progress bar; at most the one-time note that kernels are being compiled
    assert "Traceback" not in res.stderr
    assert all(line.startswith("compiling the CPU kernels: first run only") for line in res.stderr.splitlines())
    assert res.stdout.startswith("data: input.txt, 2,580 tokens")
    for s in ("step 0: train loss", "step 2: train loss", "step 4: train loss", "final: train loss", "(iter 4)",
              "sample:", f"checkpoint: {Path('tmp/run/ckpt.safetensors')}"):
        assert s in res.stdout, s
    sample = res.stdout.split("sample:\n", 1)[1].split("\ncheckpoint:")[0]
    assert len(sample) == 20 and set(sample) <= set(TEXT)
    ck = load_checkpoint(out)
    assert ck["meta"]["step"] == 4
    assert ck["meta"]["train_config"]["lr_decay_iters"] == 4  # a short run decays over its own length
    assert ck["meta"]["model_config"]["n_embd"] == 16
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if r.get("eval")] == [0, 2, 4]
    assert [r["iter"] for r in log if not r.get("eval")] == [1, 2, 3, 4]


def test_generate_is_reproducible_and_continues_the_prompt(work, env, run):
    args = ("generate", "--ckpt", "tmp/run", "--prompt", "the qu", "--max-new-tokens", 20, "--seed", 1)
    a, b = tlm(work, env, *args), tlm(work, env, *args, script=True)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert a.stdout == b.stdout
    assert a.stdout.startswith("the qu")
    text = a.stdout[:-1]
    assert a.stdout.endswith("\n") and len(text) == len("the qu") + 20 and set(text) <= set(TEXT)


def test_eval_prints_loss_and_perplexity(work, env, run):
    res = tlm(work, env, "eval", "--ckpt", "tmp/run", "--data", "input.txt")
    assert res.returncode == 0, res.stderr
    head, row, note = res.stdout.splitlines()
    assert head.split() == ["model", "tokens", "loss", "perplexity", "bits/byte"]
    assert note == "(split val, 257 bytes; windows of 8 tokens every 8)"
    res = tlm(work, env, "eval", "--ckpt", "tmp/run", "--data", "input.txt", "--json")
    r = json.loads(res.stdout)
    assert list(r) == ["model", "tokens", "loss", "ppl", "bpb"] and row.split()[1:] == [
        f"{r['tokens']:,}", f"{r['loss']:.4f}", f"{r['ppl']:.3f}", f"{r['bpb']:.4f}"]
    assert r["ppl"] == pytest.approx(math.exp(r["loss"]), rel=1e-9)
    assert r["bpb"] == pytest.approx(r["loss"] / math.log(2), rel=1e-9)  # ASCII: one byte per character token
    vocab = len(set(TEXT))
    assert 0 < r["loss"] < 2 * math.log(vocab)  # barely trained: near log(vocab)
    assert r["tokens"] == 258 - 1  # the val split (10%) has 258 tokens: 257 targets


def test_info(work, env, run):
    res = tlm(work, env, "info", "--ckpt", "tmp/run")
    assert res.returncode == 0, res.stderr
    assert "parameters:" in res.stdout and "FLOPs per token" in res.stdout
    assert f"vocab_size={len(set(TEXT))}, block_size=8, n_layer=1, n_head=2" in res.stdout
    res = tlm(work, env, "info", "--preset", "tiny", script=True)
    assert res.returncode == 0, res.stderr
    assert "source: preset tiny" in res.stdout and "n_layer=4" in res.stdout and "n_embd=128" in res.stdout


def test_resume_continues_the_same_run(work, env, run):
    """--resume with only --max_iters: the run keeps its own settings (learning rate schedule,
    eval interval, dropout...) and ends bit-for-bit where an uninterrupted run ends."""
    out, _ = run
    shutil.copytree(out, work / "tmp" / "resumed")
    res = tlm(work, env, "train", "--resume", "--out", "tmp/resumed", "--max_iters", 6, "--quiet")
    assert res.returncode == 0, res.stderr
    assert "step 6: train loss" in res.stdout and "(iter 6)" in res.stdout
    full = tlm(work, env, "train", "--data", "input.txt", "--max_iters", 6, "--lr_decay_iters", 4, *SMALL,
               "--sample_tokens", 0, "--out", "tmp/full")
    assert full.returncode == 0, full.stderr
    a, b = load_checkpoint(work / "tmp" / "resumed"), load_checkpoint(work / "tmp" / "full")
    assert a["meta"]["step"] == b["meta"]["step"] == 6
    for k in b["model"]:
        assert np.array_equal(a["model"][k], b["model"][k]), k

    def losses(path):
        recs = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
        return [(r["iter"], r.get("eval", False), r["train_loss"], r.get("val_loss")) for r in recs]

    assert losses(work / "tmp" / "resumed") == losses(work / "tmp" / "full")


# ---- bad input: one line on stderr, exit 2 ------------------------------------------------------

TRAIN = ("train", "--max_iters", 2, *SMALL, "--sample_tokens", 0, "--out", "tmp/bad")


def test_missing_data_file(work, env):
    assert_usage_error(tlm(work, env, *TRAIN, "--data", "nope.txt"), "nope.txt", "not found")


def test_empty_data_file(work, env):
    (work / "empty.txt").write_text("")
    assert_usage_error(tlm(work, env, *TRAIN, "--data", "empty.txt", script=True), "empty.txt", "empty")


def test_non_utf8_data_file(work, env):
    (work / "latin1.txt").write_bytes("café crème\n".encode("latin-1") * 20)
    assert_usage_error(tlm(work, env, *TRAIN, "--data", "latin1.txt"), "latin1.txt", "UTF-8")


def test_block_size_larger_than_the_val_split(work, env):
    args = [a if a != "8" else "300" for a in TRAIN]  # 258 val tokens < 301
    assert_usage_error(tlm(work, env, *args, "--data", "input.txt"), "val split", "block_size=300")


def test_prompt_with_unseen_characters(work, env, run):
    res = tlm(work, env, "generate", "--ckpt", "tmp/run", "--prompt", "the cafés €5", "--max-new-tokens", 5)
    assert_usage_error(res, "not in the vocabulary", "'5'", "'é'", "'€'")
    assert res.stdout == ""


def test_corrupt_checkpoint(work, env, run):
    out, _ = run
    bad = work / "corrupt.safetensors"
    raw = (out / "ckpt.safetensors").read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    assert_usage_error(tlm(work, env, "generate", "--ckpt", "corrupt.safetensors"), "corrupt.safetensors",
                       "is not a tinygrad_lm checkpoint", "truncated")


def test_incompatible_checkpoint(work, env, run):
    out, _ = run
    ck = load_checkpoint(out)
    weights = dict(ck["model"])
    weights["transformer.h.0.mlp.c_fc.weight"] = np.zeros((10, 16), np.float32)  # should be (64, 16)
    save_checkpoint(work / "wrongshape", weights, ck["meta"], ck["optimizer"])
    res = tlm(work, env, "eval", "--ckpt", "wrongshape", "--data", "input.txt")
    assert_usage_error(res, "incompatible checkpoint", "wrongshape", "c_fc.weight")
    res = tlm(work, env, "train", "--resume", "--out", "wrongshape", "--quiet")
    assert_usage_error(res, "wrongshape", "c_fc.weight")


def test_missing_checkpoint(work, env):
    assert_usage_error(tlm(work, env, "generate", "--ckpt", "nowhere"), "no checkpoint", "nowhere")


def test_unknown_option_command_and_preset(work, env):
    assert_usage_error(tlm(work, env, "train", "--no-such-flag", "1"), "--no-such-flag")
    assert_usage_error(tlm(work, env, "frobnicate"), "frobnicate")
    assert_usage_error(tlm(work, env, "info", "--preset", "huge"), "huge", "tiny")


@pytest.mark.parametrize("flags,fragments", [
    (["--n_layer", "-1"], ["n_layer", "-1"]),
    (["--n_embd", "20", "--n_head", "3"], ["n_embd", "n_head"]),
])
def test_invalid_model_values(work, env, flags, fragments):
    assert_usage_error(tlm(work, env, *TRAIN, "--data", "input.txt", *flags), *fragments)


@pytest.mark.parametrize("flags,fragment", [
    (["--top_p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--temperature", "-1"], "temperature"),
])
def test_invalid_sampling_values(work, env, run, flags, fragment):
    res = tlm(work, env, "generate", "--ckpt", "tmp/run", "--prompt", "the", *flags)
    assert_usage_error(res, fragment)
    assert res.stdout == ""  # refused before the prompt is echoed


# ---- more validation, in-process (no subprocess cost) -------------------------------------------

@pytest.fixture
def main(work, run, monkeypatch, capsys):
    monkeypatch.chdir(work)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(work / "cache"))

    def call(*args):
        code = cli.main([str(a) for a in args])
        return code, *capsys.readouterr()

    return call


@pytest.mark.parametrize("args,fragment", [
    (TRAIN + ("--data", "input.txt", "--n_layer", "abc"), "invalid int value: 'abc'"),
    (TRAIN + ("--data", "input.txt", "--batch_size", "0"), "batch_size"),
    (TRAIN + ("--data", "input.txt", "--dropout", "1.5"), "dropout"),
    (TRAIN + ("--data", "input.txt", "--learning_rate", "nan"), "learning_rate"),
    (TRAIN + ("--data", "input.txt", "--max_iters", "-1"), "max_iters"),
    (TRAIN + ("--data", "input.txt", "--decay_lr", "maybe"), "maybe"),
    (TRAIN + ("--data", "input.txt", "--device", "tpu"), "tpu"),
    (TRAIN + ("--data", "input.txt", "--tokenizer", "wordpiece"), "wordpiece"),
    (TRAIN + ("--data", "input.txt", "--tokenizer", "bpe", "--vocab_size", "100"), "bpe_vocab_size"),
    (TRAIN + ("--data", "input.txt", "--preset", "nope"), "nope"),
    (TRAIN + ("--data", ""), "empty"),
    (("train", "--resume", "--out", "missing_run", "--quiet"), "no checkpoint"),
    (("generate",), "--ckpt --model"),
    (("generate", "--ckpt", "tmp/run", "--top-k", "0"), "top_k"),
    (("generate", "--ckpt", "tmp/run", "--max-new-tokens", "-1"), "max-new-tokens"),
    (("generate", "--ckpt", "tmp/run", "--temperature", "inf"), "temperature"),
    (("eval", "--ckpt", "tmp/run", "--data", "input.txt", "--batch-size", "0"), "batch-size"),
    (("eval", "--ckpt", "tmp/run", "--data", "input.txt", "--batch-size", "-2"), "batch-size"),
    (("eval", "--ckpt", "tmp/run", "--data", "input.txt", "--split", "test"), "test"),
    (("eval", "--ckpt", "nowhere"), "nowhere"),
    (("eval", "--model", "nowhere-model"), "no model 'nowhere-model'"),
    (("eval", "--ckpt", "tmp/run", "--data", "input.txt", "--context", "9"), "block size 8"),
    (("eval", "--ckpt", "tmp/run", "--data", "input.txt", "--context", "4", "--stride", "5"), "unscored"),
    (("generate", "--model", "nowhere-model"), "no model"),
    (("info",), "--ckpt"),
    (("info", "--ckpt", "tmp/run", "--preset", "tiny"), "not allowed"),
    (("info", "--ckpt", "nowhere"), "nowhere"),
])
def test_usage_errors_in_process(main, args, fragment):
    code, out, err = main(*args)
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR) and fragment in lines[0], err


def test_eval_text_with_unseen_characters(main):
    Path("other.txt").write_text("Zebras quack? " * 40)
    code, out, err = main("eval", "--ckpt", "tmp/run", "--data", "other.txt")
    assert code == 2 and "not in the vocabulary" in err and "'Z'" in err and "'q'" not in err


def test_eval_splits_and_batching_agree(main):
    """The loss is over every target once, so the batch size cannot change it."""
    losses = {}
    for split in ("val", "train", "all"):
        for bs in ("1", "1000"):
            code, out, err = main("eval", "--ckpt", "tmp/run", "--data", "input.txt", "--split", split,
                                  "--batch-size", bs, "--json")
            assert code == 0, err
            losses[split, bs] = json.loads(out)["loss"]
        assert losses[split, "1"] == pytest.approx(losses[split, "1000"], rel=1e-5)
    n_train, n_val = 2322 - 1, 258 - 1
    want = (losses["train", "1"] * n_train + losses["val", "1"] * n_val + 0) / (n_train + n_val)
    assert losses["all", "1"] == pytest.approx(want, rel=1e-3)  # plus the one target across the split


def test_generate_without_prompt_and_zero_tokens(main):
    code, out, err = main("generate", "--ckpt", "tmp/run", "--max-new-tokens", "0")
    assert (code, out, err) == (0, "\n", "")
    code, out, err = main("generate", "--ckpt", "tmp/run", "--max-new-tokens", "7", "--seed", "3",
                          "--temperature", "0")
    assert code == 0 and len(out) == 8  # 7 characters and a newline
    code, again, _ = main("generate", "--ckpt", "tmp/run", "--max-new-tokens", "7", "--seed", "4",
                          "--temperature", "0")
    assert again == out  # greedy: the seed does not matter


def test_output_folder_that_is_a_file(main):
    Path("not_a_folder").write_text("x")
    code, out, err = main(*TRAIN, "--data", "input.txt", "--out", "not_a_folder")
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(ERROR) and "not_a_folder" in lines[0], err


def test_end_of_training_sample_is_what_generate_gives(main):
    """The sample printed after training (seed 1337, temperature 0.8, top-k 200, from a newline)
    is generate's output for the saved model: sampling runs without dropout. (Heavy dropout and
    a model trained past uniform logits, or dropout would hardly change the sample.)"""
    code, out, err = main("train", "--data", "input.txt", *SMALL, "--dropout", "0.5", "--max_iters", 30,
                          "--learning_rate", 0.05, "--warmup_iters", 0, "--eval_interval", 100,
                          "--sample_tokens", 40, "--out", "tmp/sampled")
    assert code == 0, err
    sample = out.split("sample:\n", 1)[1].split("checkpoint:")[0]
    code, gen, err = main("generate", "--ckpt", "tmp/sampled", "--seed", 1337, "--max-new-tokens", 40)
    assert code == 0, err
    assert gen == sample and len(gen) == 41
