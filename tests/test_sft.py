"""Supervised fine-tuning data: the chat template renders conversations, and only the assistant's
tokens (with the end of their turn) are trained on."""
from __future__ import annotations

import numpy as np
import pytest

from tinygrad_lm.align.sft import IGNORE, SFTData, chat_template_of, encode_conversation
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.tensor import manual_seed
from tinygrad_lm.tokenizers import ByteTokenizer

CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOK = ByteTokenizer(CHAT_TOKENS)


def convo(user, reply, system=None):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return {"messages": msgs}


def trained_text(messages):
    ids, trained = encode_conversation(messages, TOK, chat_template_of(TOK))
    return TOK.decode(ids[trained].tolist())


def test_only_the_replies_and_their_end_of_turn_are_trained():
    assert trained_text(convo("Reverse the word: stone", "enots")["messages"]) == "enots<|im_end|>\n"
    two_turns = convo("hi", "hello", system="be brief")["messages"] + [
        {"role": "user", "content": "again"}, {"role": "assistant", "content": "ok"}]
    assert trained_text(two_turns) == "hello<|im_end|>\nok<|im_end|>\n"


def test_batches_ignore_prompt_and_padding_positions():
    rows = [convo("What is 2 + 3?", "5"), convo("Uppercase: ab cd", "AB CD")]
    data = SFTData(rows, rows[:1], TOK)
    x, y = data.get_batch("train", 8, 64, np.random.default_rng(0))
    for xb, yb in zip(x, y):
        kept = yb != IGNORE
        assert TOK.decode(yb[kept].tolist()) in ("5<|im_end|>\n", "AB CD<|im_end|>\n")
        text = TOK.decode(xb.tolist())
        assert text.startswith("<|im_start|>user\n")
        # each kept target is the next input token: the model learns the reply from the prompt before it
        idx = np.flatnonzero(kept)
        assert np.array_equal(yb[idx[:-1]], xb[idx[:-1] + 1])


def test_the_loss_does_not_see_prompt_targets():
    """Two conversations with different prompts and the same reply: changing the prompt's tokens
    changes only inputs, never which targets count, and a target on a prompt position never counts."""
    manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16))
    data = SFTData([convo("Reverse the word: ab", "ba")], [convo("x", "y")], TOK)
    x, y = data.get_batch("train", 1, 40, np.random.default_rng(0))
    _, loss = model(x, y)
    y2 = y.copy()
    prompt_positions = np.flatnonzero(y[0] == IGNORE)
    y2[0, prompt_positions] = IGNORE    # already ignored: this is what "no loss on prompt tokens" means
    assert np.array_equal(y, y2)
    x2 = x.copy()
    x2[0, 0] = TOK.token_id("<|endoftext|>")   # a different prompt token
    _, loss2 = model(x2, y)
    assert loss.item() != loss2.item()         # inputs matter (attention), targets do not move


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="assistant message"):
        encode_conversation([{"role": "user", "content": "hi"}], TOK, chat_template_of(TOK))
    with pytest.raises(ValueError, match="ends an assistant turn"):
        SFTData([convo("a", "b")], [convo("a", "b")], ByteTokenizer())     # no ChatML special tokens
    data = SFTData([convo("a" * 50, "b")], [convo("a", "b")], TOK)
    with pytest.raises(ValueError, match="longest train conversation"):
        data.check_block_size(16)




def test_sft_command_on_the_builtin_task_then_chat(chat_base, monkeypatch, capsys):
    from tinygrad_lm import cli
    monkeypatch.chdir(chat_base)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(chat_base / "cache"))
    args = ["sft", "--model", "base", "--task", "builtin", "--task-size", "40", "--out", "run", "--max_iters", "3",
            "--eval_interval", "3", "--eval_iters", "1", "--batch_size", "4", "--seq_len", "100", "--quiet"]
    assert cli.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "the built-in task (40 + 50 examples)" in out and "step 3:" in out
    assert cli.main(["sft", "--resume", "--out", "run", "--max_iters", "4", "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["chat", "--ckpt", "run", "--message", "Reverse the word: stone", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    assert cli.main(["eval", "--ckpt", "run", "--task", "builtin", "--task-size", "5", "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "reverse", "sort", "uppercase", "add", "count", "all"]
    assert table[1].startswith("run ") and "on 5 test prompts" in table[2]
    assert cli.main(["sft", "--model", "base", "--task", "builtin", "--data", "x.jsonl", "--out", "r2"]) == 2


def test_sft_command_on_jsonl(chat_base, monkeypatch, capsys):
    from tinygrad_lm import cli
    from tinygrad_lm.align.jsonl import write_jsonl
    monkeypatch.chdir(chat_base)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(chat_base / "cache"))
    write_jsonl(chat_base / "chats.jsonl", [{"prompt": f"Say {i}", "completion": str(i)} for i in range(10)])
    args = ["sft", "--model", "base", "--data", "chats.jsonl", "--method", "lora", "--out", "run_j", "--max_iters", "2",
            "--eval_interval", "2", "--eval_iters", "1", "--batch_size", "2", "--seq_len", "40", "--quiet"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert (chat_base / "run_j" / "adapter_config.json").is_file()
