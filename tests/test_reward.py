"""The reward model: a scalar head on the last token, trained with the Bradley-Terry loss through the
one Trainer (`tinygrad-lm reward`), and the built-in raters (sample twice, the scripted judge ranks)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tinygrad_lm as tg
from tinygrad_lm.align.preferences import PreferenceData, last_token_index
from tinygrad_lm.align.reward import RewardModel, evaluate_reward_model, judge_pairs, render_reply
from tinygrad_lm.align.tasks import answer, judge
from tinygrad_lm.checkpoint import CheckpointError
from tinygrad_lm.gradcheck import gradcheck
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.tensor import manual_seed
from tinygrad_lm.tokenizers import ByteTokenizer

from strategies import lying, parameters_as_inputs

CHAT_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOK = ByteTokenizer(CHAT_TOKENS)


def tiny_reward_model(seed=0, scale=None, **kw) -> RewardModel:
    """A reward model over a tiny byte-level GPT; ``scale`` re-draws every parameter with that std
    (norm scales around 1) so every path carries a sizeable signal for the gradient check."""
    cfg = dict(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    cfg.update(kw)
    manual_seed(seed)
    rm = RewardModel(GPT(GPTConfig(**cfg)))
    if scale is not None:
        rng = np.random.default_rng(seed + 1000)
        for name, p in rm.named_parameters():
            base = 1.0 if p.ndim == 1 and name.endswith("weight") and ".ln" in name else 0.0
            p.data[...] = base + rng.normal(0.0, scale, p.shape)
    return rm


def pairs(n, chosen="yes", rejected="no", start=0):
    return [{"prompt": f"Pick {i}", "chosen": chosen, "rejected": rejected} for i in range(start, start + n)]


def test_state_dict_reads_model_and_score():
    names = list(tiny_reward_model().state_dict())
    assert names[0].startswith("model.transformer.") and names[-2:] == ["score.weight", "score.bias"]


# ---- the loss path: gradients, the hand formula, the last token -------------------------------------

def loss_of_parameters(rm, x, y):
    """fn(*tensors) -> the Bradley-Terry loss with ``tensors`` (gradcheck's float64 copies) put in
    place of the reward model's parameters, and a function that puts the originals back."""
    return parameters_as_inputs(rm, lambda: rm(x, y)[1])


def preference_batch(block=24, n=2):
    rows = [{"prompt": "ab", "chosen": "xyz", "rejected": "q"}, {"prompt": "c", "chosen": "d", "rejected": "efgh"}]
    data = PreferenceData(rows[:n], rows[:1], TOK)
    return data.batch("train", np.arange(n), block)


def test_gradcheck_of_the_reward_loss_float64():
    rm = tiny_reward_model(scale=0.5).double()
    x, y = preference_batch()
    assert len(set(last_token_index(y))) > 1        # rows end at different positions, padding after
    names = [n for n, _ in rm.named_parameters()]
    params, fn, restore = loss_of_parameters(rm, x, y)
    try:
        assert fn(*params).dtype == np.float64
        assert gradcheck(fn, params, directional=True, seed=0)
        small = {"score.weight", "score.bias", "model.transformer.ln_f.weight", "model.transformer.ln_f.bias"}
        full = [p.detach().requires_grad_(n in small) for n, p in zip(names, params)]
        assert gradcheck(fn, full)
    finally:
        restore()
    assert rm.parameters() == params


def test_gradcheck_is_not_vacuous():
    """The closure uses the copies it is given: a loss whose numeric evaluations differ from the one
    backward saw fails, and the head's gradient is not zero."""
    rm = tiny_reward_model(scale=0.5).double()
    x, y = preference_batch()
    params, fn, restore = loss_of_parameters(rm, x, y)

    try:
        with pytest.raises(tg.GradcheckError):
            gradcheck(lying(fn), params, directional=True)
        copies = [p.detach().requires_grad_(True) for p in params]
        fn(*copies).backward()
        assert np.abs(copies[-2].grad).max() > 0      # score.weight
    finally:
        restore()


def test_bradley_terry_loss_equals_the_hand_formula():
    rm = tiny_reward_model(scale=0.5).double()
    x, y = preference_batch()
    r, loss = rm(x, y)
    h = rm.model.hidden_states(x).data                                  # (2B, T, C)
    last = last_token_index(y)
    w, b = rm.score.weight.data, rm.score.bias.data
    expect = h[np.arange(len(last)), last] @ w[0] + b[0]                 # (2B,)
    np.testing.assert_allclose(r.data, expect, rtol=1e-12)
    B = len(last) // 2
    hand = np.mean(np.log1p(np.exp(-(expect[:B] - expect[B:]))))        # -log sigmoid(r_c - r_r)
    assert loss.item() == pytest.approx(hand, rel=1e-12)


def test_the_last_token_is_read():
    rm = tiny_reward_model(scale=0.5)
    x, y = preference_batch(block=30)
    last = last_token_index(y)
    r0 = rm(x, y)[0].data.copy()
    assert len(set(last)) > 1                    # shorter rows have padding inside the longest row's window
    x2 = x.copy()
    for j, t in enumerate(last):
        x2[j, t + 1:] = 7                        # padding after the last token: nothing changes
    np.testing.assert_array_equal(rm(x2, y)[0].data, r0)
    x3 = x.copy()
    x3[0, last[0]] = (x3[0, last[0]] + 1) % 256   # the last token itself
    r3 = rm(x3, y)[0].data
    assert r3[0] != r0[0] and np.array_equal(r3[1:], r0[1:])
    x4 = x.copy()
    x4[1, 1] = (x4[1, 1] + 1) % 256              # an earlier token is seen through attention
    assert rm(x4, y)[0].data[1] != r0[1]


def test_score_ids_equals_the_training_rewards():
    rm = tiny_reward_model(scale=0.5)
    rows = [{"prompt": "ab", "chosen": "xyz", "rejected": "q"}, {"prompt": "c", "chosen": "d", "rejected": "efgh"}]
    x, y = PreferenceData(rows, rows[:1], TOK).batch("train", np.arange(2), 40)
    r = rm(x, y)[0].data
    ids = [render_reply(TOK, row["prompt"], row[side]) for side in ("chosen", "rejected") for row in rows]
    np.testing.assert_allclose(rm.score_ids(ids, batch_size=3), r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rm.score_replies(TOK, ["ab", "c"], ["xyz", "d"]), r[:2], rtol=1e-5, atol=1e-6)
    assert rm.training


def test_separable_pairs_reach_high_accuracy_through_the_trainer(tmp_path):
    """Chosen replies all end in one token, rejected in another: a short run separates them."""
    from tinygrad_lm.train import TrainConfig, Trainer
    data = PreferenceData(pairs(40, "A", "B"), pairs(20, "A", "B", start=100), TOK)
    rm = tiny_reward_model(n_embd=32)
    before = evaluate_reward_model(rm, data)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), batch_size=8, seq_len=40, max_iters=30, eval_interval=30,
                      eval_iters=2, warmup_iters=2, lr_decay_iters=30, learning_rate=3e-3, min_lr=3e-4,
                      weight_decay=0.0, progress=False)
    Trainer(cfg, model=rm, tokenizer=TOK, data=data, log=lambda s: None).train()
    after = evaluate_reward_model(rm, data)
    assert after["pairs"] == 20 and after["accuracy"] > 0.9, (before, after)
    assert after["loss"] < before["loss"]


# ---- the built-in raters ---------------------------------------------------------------------------

class ScriptedModel:
    """Stands in for the SFT model: replies to each prompt with the two replies scripted for it."""

    def __init__(self, replies: dict):
        self.replies = replies
        self.config = GPTConfig(vocab_size=TOK.vocab_size, block_size=256, n_layer=1, n_head=1, n_embd=8)
        self.num_virtual_tokens = 0

    def generate(self, x, max_new_tokens, temperature, top_k, seed, stop):
        end = TOK.token_id("<|im_end|>")
        assert end in stop
        rows = []
        for k, row in enumerate(x):
            prompt = TOK.decode(row.tolist()).split("user\n")[1].split("<|im_end|>")[0]
            rows.append(list(row) + list(TOK.encode(self.replies[prompt][k % 2])) + [end])
        width = max(map(len, rows))
        return tg.Tensor(np.array([r + [end] * (width - len(r)) for r in rows]))


def test_judge_pairs_ranks_skips_ties_and_adds_reference_pairs(tmp_path):
    script = {"What is 2 + 3?": ("7", "5"),            # one correct: a sampled pair, the correct reply chosen
              "What is 4 + 4?": ("9", "9"),            # a tie, both wrong: the answer over "9"
              "What is 1 + 1?": ("3", "0 "),           # both wrong, equally far: only length decides; the answer
                                                       # over the longer
              "What is 7 + 1?": ("8", "8"),            # a tie, both correct: nothing to learn
              "Reverse the word: stone": ("enots", "enotx!")}   # one wrong reply far off: sampled
    prompts = list(script)
    lines = []
    records, stats = judge_pairs(ScriptedModel(script), TOK, prompts, log=lines.append, path=tmp_path / "p.jsonl")
    by_prompt = {r["prompt"]: r for r in records}
    assert set(by_prompt) == {"What is 2 + 3?", "What is 4 + 4?", "What is 1 + 1?", "Reverse the word: stone"}
    assert by_prompt["What is 2 + 3?"] == {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "7",
                                           "source": "sampled", "correct": [True, False]}
    assert by_prompt["What is 4 + 4?"]["source"] == "reference" and by_prompt["What is 4 + 4?"]["chosen"] == "8"
    assert by_prompt["What is 1 + 1?"] == {"prompt": "What is 1 + 1?", "chosen": "2", "rejected": "0 ",
                                           "source": "reference", "correct": [True, False]}
    for r in records:    # the judge decides every order
        assert judge(r["prompt"], r["chosen"], r["rejected"]) == 0
    assert stats == {"prompts": 5, "sampled": 2, "ties": 2, "with_correct": 3, "both_correct": 1,
                     "uninformative": 1, "reference": 2, "pairs": 4}
    assert "ties skipped: 2" in lines[0] and "2 sampled + 2 reference pairs" in lines[0]
    assert [json.loads(s)["prompt"] for s in (tmp_path / "p.jsonl").read_text().splitlines()] == \
        [r["prompt"] for r in records]
    # without reference pairs only what was sampled; n_pairs stops early
    plain, st = judge_pairs(ScriptedModel(script), TOK, prompts, reference=False, log=lines.append)
    assert [r["source"] for r in plain] == ["sampled"] * 3 and st["reference"] == 0
    assert len(judge_pairs(ScriptedModel(script), TOK, prompts, 1, log=lines.append)[0]) == 1
    with pytest.raises(ValueError, match="not a prompt of the built-in task"):
        judge_pairs(ScriptedModel(script), TOK, ["hello"], log=lines.append)
    assert answer("What is 1 + 1?") == "2"


# ---- the command -----------------------------------------------------------------------------------



def run_cli(args, capsys):
    from tinygrad_lm import cli
    rc = cli.main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


TRAIN_FLAGS = ["--eval_iters", "1", "--batch_size", "4", "--seq_len", "100", "--quiet"]


def test_reward_command_on_jsonl_resume_and_load(chat_base, monkeypatch, capsys):
    from tinygrad_lm.align.jsonl import write_jsonl
    from tinygrad_lm.cli.reward import load_reward_model
    monkeypatch.chdir(chat_base)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(chat_base / "cache"))
    write_jsonl(chat_base / "prefs.jsonl", pairs(20, "A", "B"))
    out = run_cli(["reward", "--model", "base", "--data", "prefs.jsonl", "--out", "run", "--max_iters", "3",
                   "--eval_interval", "3", "--lr", "3e-3", *TRAIN_FLAGS], capsys)
    assert "step 3:" in out and "held-out pair accuracy" in out
    stats = json.loads((chat_base / "run" / "reward_eval.json").read_text())
    assert stats["pairs"] == 2 and stats["iter"] == 3 and 0 <= stats["accuracy"] <= 1
    run_cli(["reward", "--resume", "--out", "run", "--max_iters", "4", "--quiet"], capsys)
    assert json.loads((chat_base / "run" / "reward_eval.json").read_text())["iter"] == 4
    rm, tok, ck = load_reward_model(chat_base / "run")
    assert isinstance(rm, RewardModel) and not rm.training and ck["meta"]["finetune"]["phase"] == "reward"
    data = PreferenceData(pairs(18, "A", "B"), pairs(20, "A", "B")[18:], tok)
    again = evaluate_reward_model(rm, data)
    assert again["loss"] == pytest.approx(json.loads((chat_base / "run" / "reward_eval.json").read_text())["loss"],
                                          rel=1e-5)
    # LoRA: the base stays frozen, the head and the LoRA weights train, and it loads back the same way
    run_cli(["reward", "--model", "base", "--data", "prefs.jsonl", "--method", "lora", "--out", "run_lora",
             "--max_iters", "2", "--eval_interval", "2", *TRAIN_FLAGS], capsys)
    rm2, _, ck2 = load_reward_model(chat_base / "run_lora")
    assert ck2["meta"]["trainable_only"] and {"score.weight", "score.bias"} <= set(ck2["model"])
    np.testing.assert_array_equal(rm2.score.weight.data, ck2["model"]["score.weight"])
    from tinygrad_lm import cli
    assert cli.main(["reward", "--model", "base", "--data", "prefs.jsonl", "--task", "builtin", "--out", "r2"]) == 2
    assert cli.main(["reward", "--model", "base", "--data", "prefs.jsonl", "--out", "r3", "--merge"]) == 2
    run_cli(["finetune", "--model", "base", "--data", "prefs.jsonl", "--out", "ft", "--method", "lora",
             "--max_iters", "1", "--eval_interval", "1", "--eval_iters", "1", "--batch_size", "2", "--seq_len", "32",
             "--quiet"], capsys)
    with pytest.raises(CheckpointError, match="not a reward model"):
        load_reward_model(chat_base / "ft")
    # --base CKPT: a fine-tuned run as the base (the SFT model, in the words)
    run_cli(["reward", "--base", "ft", "--data", "prefs.jsonl", "--out", "run_b", "--max_iters", "1",
             "--eval_interval", "1", *TRAIN_FLAGS], capsys)
    _, _, ck3 = load_reward_model(chat_base / "run_b")
    assert ck3["meta"]["finetune"]["base"] == {"ckpt": str((chat_base / "ft").resolve())}
    assert cli.main(["reward", "--base", "ft", "--model", "base", "--data", "prefs.jsonl", "--out", "r4"]) == 2


def test_reward_command_on_the_builtin_task(chat_base, monkeypatch, capsys):
    monkeypatch.chdir(chat_base)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(chat_base / "cache"))
    out = run_cli(["reward", "--model", "base", "--task", "builtin", "--task-size", "8", "--max-new-tokens", "12",
                   "--out", "run_task", "--max_iters", "2", "--eval_interval", "2", *TRAIN_FLAGS], capsys)
    assert "judge (train):" in out and "judge (validation):" in out and "held-out pair accuracy" in out
    rows = [json.loads(s) for s in (chat_base / "run_task" / "pairs.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"]
    assert len(train) == 8 and len(val) == 50 and rows == train + val
    for r in rows:
        assert judge(r["prompt"], r["chosen"], r["rejected"]) == 0
    stats = json.loads((chat_base / "run_task" / "reward_eval.json").read_text())
    assert stats["pairs"] == 50 and stats["judge"]["counts"]["train"]["pairs"] == 8
    # an existing run is refused before any sampling
    from tinygrad_lm import cli
    assert cli.main(["reward", "--model", "base", "--task", "builtin", "--out", "run_task", "--quiet"]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_save_then_load_reward_model(chat_base):
    """RewardModel.save writes what a run writes; load_reward_model rebuilds it (full and LoRA bodies)."""
    from tinygrad_lm.cli.reward import load_reward_model
    from tinygrad_lm.peft import LoraConfig, get_peft_model
    from tinygrad_lm.peft.finetune import run_meta
    base = {"model": str(chat_base / "base")}
    ids = [render_reply(TOK, "Pick 1", "A"), render_reply(TOK, "Pick 22", "BB")]
    for method in ("full", "lora"):
        manual_seed(1)
        body = GPT.from_pretrained(base["model"])
        config = LoraConfig(r=2, target_modules=("c_attn",)) if method == "lora" else None
        rm = RewardModel(body if config is None else get_peft_model(body, config))
        for p in rm.parameters():   # trained weights: not the ones a fresh build draws
            if p.requires_grad:
                p.data[...] += np.random.default_rng(2).normal(0, 0.1, p.shape).astype(p.dtype)
        rm.save(chat_base / f"saved_{method}", TOK, run_meta(method, config, base, None))
        back, tok, ck = load_reward_model(chat_base / f"saved_{method}")
        assert ck["meta"]["trainable_only"] == (method == "lora")
        np.testing.assert_allclose(back.score_ids(ids), rm.score_ids(ids), rtol=1e-6)
