"""`tinygrad-lm finetune` end to end (in-process, tiny models): every method trains through the
training loop, saves only what it trained, resumes exactly, and its adapter goes back on the base
in generate / eval; bad input gets one clear error line."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tinygrad_lm import cli
from tinygrad_lm.checkpoint import load_checkpoint
from tinygrad_lm.hub.safetensors_file import read_safetensors
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.tensor import manual_seed
from tinygrad_lm.tokenizers import ByteTokenizer

TEXT = "to be, or not to be, that is the question: whether 'tis nobler in the mind to suffer\n" * 40
FAST = ["--max_iters", "4", "--eval_interval", "2", "--eval_iters", "2", "--batch_size", "2", "--seq_len", "16",
        "--quiet"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A byte-level llama-style base saved as an HF folder (with our tokenizer) and as a training run."""
    d = tmp_path_factory.mktemp("ft")
    (d / "text.txt").write_text(TEXT)
    tok = ByteTokenizer()
    manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                          pos="rope", norm="rmsnorm", mlp="swiglu", bias=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # our byte tokenizer has no HF class: saved in our own JSON
        model.save_pretrained(d / "base", tokenizer=tok)
    return d


@pytest.fixture
def main(work, monkeypatch, capsys):
    monkeypatch.chdir(work)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(work / "cache"))

    def call(*args):
        code = cli.main([str(a) for a in args])
        return code, *capsys.readouterr()

    return call


def finetune(main, out, method, *extra):
    code, stdout, err = main("finetune", "--model", "base", "--data", "text.txt", "--method", method, "--out", out,
                             *FAST, *extra)
    assert code == 0, err
    return stdout


@pytest.mark.parametrize("method, trained", [("lora", "lora_"), ("adapter", "adapter."), ("prompt", "soft_prompt"),
                                             ("qlora", "lora_")])
def test_each_method_saves_only_what_it_trained(work, main, method, trained):
    out = f"run_{method}"
    stdout = finetune(main, out, method, *(["--num-virtual-tokens", "4"] if method == "prompt" else []))
    assert "adapter:" in stdout and "--adapter" in stdout
    ckpt = load_checkpoint(work / out)
    assert ckpt["meta"]["trainable_only"] and ckpt["meta"]["finetune"]["method"] == method
    assert ckpt["model"] and all(trained in k for k in ckpt["model"])
    cfg = json.loads((work / out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == {"lora": "LORA", "qlora": "LORA", "adapter": "BOTTLENECK", "prompt": "PROMPT_TUNING"}[method]
    assert all("base_layer" not in k for k in read_safetensors(work / out / "adapter_model.safetensors"))


def test_generation_from_the_run_equals_base_plus_adapter(main):
    finetune(main, "run_gen", "lora", "--learning_rate", "0.05")
    a = main("generate", "--ckpt", "run_gen", "--prompt", "to be", "--max-new-tokens", "12", "--temperature", "0")
    b = main("generate", "--model", "base", "--adapter", "run_gen", "--prompt", "to be", "--max-new-tokens", "12",
             "--temperature", "0")
    c = main("generate", "--model", "base", "--prompt", "to be", "--max-new-tokens", "12", "--temperature", "0")
    assert a[0] == b[0] == 0 and a[1] == b[1]
    assert a[1] != c[1]            # the adapter changed something (a large learning rate on purpose)


def test_resume_continues_exactly(work, main):
    finetune(main, "straight", "lora")
    main("finetune", "--model", "base", "--data", "text.txt", "--method", "lora", "--out", "halves",
         *FAST[:1], "2", *FAST[2:])
    code, _, err = main("finetune", "--resume", "--out", "halves", "--max_iters", "4", "--quiet")
    assert code == 0, err
    a = read_safetensors(work / "straight" / "adapter_model.safetensors")
    b = read_safetensors(work / "halves" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_full_finetune_writes_a_model_and_merge_writes_the_merged_one(work, main):
    stdout = finetune(main, "run_full", "full")
    assert (work / "run_full" / "model.safetensors").is_file() and "generate --model" in stdout
    finetune(main, "run_merge", "lora", "--merge")
    merged = GPT.from_pretrained(work / "run_merge" / "merged")
    ids = np.arange(10)[None] + 40
    from tinygrad_lm.peft import PeftModel
    with_adapter = PeftModel.from_pretrained(GPT.from_pretrained(work / "base"), work / "run_merge")
    np.testing.assert_allclose(merged(ids, all_logits=True)[0].data, with_adapter(ids, all_logits=True)[0].data,
                               rtol=1e-5, atol=1e-5)


def test_eval_with_quantize_reports_the_cost(main):
    code, out, err = main("eval", "--model", "base", "--data", "text.txt", "--quantize", "int8", "--quiet")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("base ") and lines[2].startswith("base (int8)")


@pytest.mark.parametrize("args, fragment", [
    (("finetune", "--data", "text.txt", "--out", "x"), "needs a base"),
    (("finetune", "--model", "base", "--data", "text.txt", "--out", "x", "--method", "prompt", "--merge"), "--merge"),
    (("finetune", "--model", "base", "--data", "text.txt", "--out", "x", "--method", "dora"), "dora"),
    (("finetune", "--model", "base", "--data", "text.txt", "--out", "x", "--target-modules", "q_proj"), "c_attn"),
    (("finetune", "--model", "base", "--data", "text.txt", "--out", "x", "--seq_len", "99"), "seq_len"),
    (("generate", "--model", "base", "--adapter", "nowhere"), "adapter_config.json"),
])
def test_bad_input_gets_one_clear_line(main, args, fragment):
    code, out, err = main(*args)
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err


def test_an_adapter_is_not_replaced_without_overwrite(main):
    finetune(main, "run_twice", "adapter")
    code, _, err = main("finetune", "--model", "base", "--data", "text.txt", "--out", "run_twice", *FAST)
    assert code == 2 and "already holds" in err
    finetune(main, "run_twice", "lora", "--overwrite")


def test_hold_out_keeps_the_last_tenth_and_refuses_too_few():
    from tinygrad_lm.cli.finetune import hold_out
    assert hold_out(list(range(20)), "f.jsonl", "pair(s)", "DPO") == (list(range(18)), [18, 19])
    assert hold_out(list(range(5)), "f.jsonl", "pair(s)", "DPO", 2) == ([0, 1, 2], [3, 4])
    with pytest.raises(ValueError, match=r"f.jsonl: 1 prompt\(s\); PPO needs training records besides the 1 held out"):
        hold_out(["only"], "f.jsonl", "prompt(s)", "PPO")
