"""DPO through DPOModel and `tinygrad-lm dpo`: the loss equals the formula over log-probs computed
by hand, the reference never moves (a frozen copy, or the base with the LoRA disabled and no second
copy), the start is log 2 with zero margins, the one Trainer trains it, and a short run separates a
separable preference set."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tinygrad_lm as tg
from tinygrad_lm.align.dpo import DPOModel, corrupt_answer, evaluate_pairs, task_preference_pairs
from tinygrad_lm.align.preferences import PreferenceData
from tinygrad_lm.align.tasks import edit_distance, is_correct, judge
from tinygrad_lm.checkpoint import load_checkpoint
from tinygrad_lm.gradcheck import gradcheck
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.peft import LoraConfig, get_peft_model
from tinygrad_lm.tokenizers import ByteTokenizer

from strategies import parameters_as_inputs
from tinygrad_lm.train import TrainConfig, Trainer

TOK = ByteTokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
PAIRS = [{"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "6"},
         {"prompt": "Reverse the word: abc", "chosen": "cba", "rejected": "cbb"},
         {"prompt": "Uppercase: ab cd", "chosen": "AB CD", "rejected": "AB CE"},
         {"prompt": "How many letters are in: qwe", "chosen": "3", "rejected": "4"}]
T = 56   # every sequence of PAIRS fits (the longest is 50 tokens)


def tiny(seed=0, **kw):
    tg.manual_seed(seed)
    return GPT(GPTConfig(**{**dict(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16), **kw}))


def data_of(pairs=PAIRS, val=None):
    return PreferenceData(pairs, val or pairs[:2], TOK)


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def summed_logps(model, x, y):
    """log pi(reply | prompt) of each row, by hand: NumPy log-softmax of the model's logits at the targets."""
    with tg.no_grad():
        logits = model(x, all_logits=True)[0].numpy().astype(np.float64)
    lp = log_softmax(logits)
    rows, cols = np.nonzero(y != -1)
    out = np.zeros(len(y))
    np.add.at(out, rows, lp[rows, cols, y[rows, cols]])
    return out


def perturb(model, scale, seed=1):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data + rng.normal(0, scale, p.shape).astype(p.dtype)


def trainer_for(dpo, data, tmp_path, **kw):
    cfg = dict(out_dir=str(tmp_path / "run"), batch_size=2, seq_len=T, max_iters=6, eval_interval=3, eval_iters=1,
               learning_rate=1e-2, warmup_iters=0, decay_lr=False, weight_decay=0.0, sample_tokens=0, progress=False)
    return Trainer(TrainConfig(**{**cfg, **kw}), model=dpo, tokenizer=TOK, data=data, log=lambda s: None)


# ---- the loss ---------------------------------------------------------------------------------------

def test_dpo_model_equals_the_formula_on_hand_computed_logprobs():
    policy = tiny().double()
    reference = tiny().double()            # the same weights: what DPOModel copies
    dpo = DPOModel(policy, beta=0.25)
    perturb(policy, 0.05)                  # the policy moves; the copy must not
    x, y = data_of().get_batch("train", 3, T, np.random.default_rng(0))
    logps, loss = dpo(x, y)
    pi, ref = summed_logps(policy, x, y), summed_logps(reference, x, y)
    np.testing.assert_allclose(logps.numpy(), pi, rtol=1e-12)
    rc, rr = 0.25 * (pi[:3] - ref[:3]), 0.25 * (pi[3:] - ref[3:])
    margin = rc - rr
    want = np.mean(-np.log(1 / (1 + np.exp(-margin))))
    assert loss.dtype == np.float64
    np.testing.assert_allclose(loss.item(), want, rtol=1e-12)
    s = dpo.last_stats
    np.testing.assert_allclose([s["rewards/chosen"], s["rewards/rejected"], s["rewards/margin"], s["loss"]],
                               [rc.mean(), rr.mean(), margin.mean(), want], rtol=1e-10)
    assert s["rewards/accuracy"] == np.mean(margin > 0)
    np.testing.assert_allclose([s["logps/chosen"], s["logps/rejected"]], [pi[:3].mean(), pi[3:].mean()], rtol=1e-12)


def test_gradcheck_through_the_policy_float64():
    """d loss / d every policy parameter, along a random direction; gradcheck perturbs float64 copies,
    so the closure puts them onto the policy (the reference is a separate copy and stays)."""
    dpo = DPOModel(tiny(n_embd=8, vocab_size=TOK.vocab_size).double(), beta=0.5)
    perturb(dpo.model, 0.1)
    x, y = data_of().get_batch("train", 2, T, np.random.default_rng(1))
    params, fn, restore = parameters_as_inputs(dpo.model, lambda: dpo(x, y)[1])
    try:
        assert gradcheck(fn, params, directional=True, seed=0)
    finally:
        restore()


def test_at_the_start_the_loss_is_log_2_and_every_margin_is_0():
    for policy in (tiny(), get_peft_model(tiny(), LoraConfig(r=4, target_modules=("c_attn", "c_fc")))):
        dpo = DPOModel(policy)
        _, loss = dpo(*data_of().get_batch("train", 4, T, np.random.default_rng(0)))
        assert loss.dtype == np.float32
        assert abs(loss.item() - math.log(2)) < 1e-6
        s = dpo.last_stats
        assert s["rewards/chosen"] == s["rewards/rejected"] == s["rewards/margin"] == 0.0
        assert s["rewards/accuracy"] == 0.0          # a tie is not a win
        ev = evaluate_pairs(dpo, data_of(), "train", batch_size=3)
        assert ev["pairs"] == 4 and ev["rewards/margin"] == 0.0 and abs(ev["loss"] - math.log(2)) < 1e-12


def test_errors():
    with pytest.raises(ValueError, match="beta"):
        DPOModel(tiny(), beta=0)
    with pytest.raises(ValueError, match="PeftModel"):
        DPOModel(tiny(), reference="adapter")
    with pytest.raises(ValueError, match="even"):
        DPOModel(tiny())(*[a[:3] for a in data_of().get_batch("train", 2, T, np.random.default_rng(0))])


# ---- the reference ---------------------------------------------------------------------------------

def test_the_trainer_trains_the_policy_and_the_copy_stays_bit_for_bit(tmp_path):
    dpo = DPOModel(tiny())
    before = dpo.reference.state_dict()
    policy_before = dpo.model.state_dict()
    data = data_of()
    trainer = trainer_for(dpo, data, tmp_path)
    result = trainer.train()
    assert result["train"] < math.log(2)
    for k, v in dpo.reference.state_dict().items():
        assert np.array_equal(v, before[k]), k
    assert any(not np.array_equal(v, policy_before[k]) for k, v in dpo.model.state_dict().items())
    assert all(not p.requires_grad for p in dpo.reference.parameters())
    assert not dpo.train().reference.training and dpo.model.training   # the copy never drops out
    # the cache gives what a fresh reference forward gives, bit for bit
    x, y = data.get_batch("train", 2, T, np.random.default_rng(5))
    cached = dpo.reference_logprobs(x, y)
    dpo.cache_reference = False
    assert np.array_equal(cached, dpo.reference_logprobs(x, y))
    # an evaluation draws the batches of the one before it: every row is cached, no reference forward
    calls = []
    forward = dpo._reference_forward
    dpo.cache_reference = True
    dpo._reference_forward = lambda x, y: calls.append(1) or forward(x, y)
    first = trainer.evaluate()
    assert trainer.evaluate() == first and not calls
    # the checkpoint holds the policy under "model." and nothing of the reference
    state = load_checkpoint(tmp_path / "run")["model"]
    assert set(state) == {f"model.{k}" for k in dpo.model.state_dict()}
    assert all(np.array_equal(state[f"model.{k}"], v) for k, v in dpo.model.state_dict().items())


def test_a_resumed_run_is_the_uninterrupted_run_bit_for_bit(tmp_path):
    """The reference cache is empty after a resume; what it recomputes equals what it had cached."""
    pairs = task_preference_pairs("train", 12, seed=0)
    data = PreferenceData(pairs[:10], pairs[10:], TOK)
    whole = DPOModel(tiny(block_size=128))
    trainer_for(whole, data, tmp_path / "a", seq_len=100).train()
    trainer_for(DPOModel(tiny(block_size=128)), data, tmp_path / "b", seq_len=100, max_iters=3).train()
    resumed = DPOModel(tiny(block_size=128))
    t = Trainer(TrainConfig(out_dir=str(tmp_path / "b" / "run"), seq_len=100, max_iters=6, eval_interval=3,
                            eval_iters=1, learning_rate=1e-2, warmup_iters=0, decay_lr=False, weight_decay=0.0,
                            sample_tokens=0, progress=False), resume=True, model=resumed, tokenizer=TOK, data=data,
                log=lambda s: None)
    assert t.step == 3
    t.train()
    for k, v in whole.state_dict().items():
        assert np.array_equal(v, resumed.state_dict()[k]), k


def test_with_lora_the_reference_is_the_disabled_adapter(tmp_path):
    base = tiny(dropout=0.3)               # dropout in training mode: the reference must run without it
    plain = tiny(dropout=0.3).eval()       # the base's weights, to compare with
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=("c_attn", "c_fc"), lora_dropout=0.5))
    dpo = DPOModel(peft)
    assert dpo.reference is None and dpo._reference == ()
    # no second copy: every array the wrapper holds is one of the policy's
    assert {id(p) for p in dpo.parameters()} == {id(p) for p in peft.parameters()}
    assert sum(p.size for p in dpo.parameters()) == sum(p.size for p in plain.parameters()) + \
        sum(p.size for n, p in peft.named_parameters() if "lora_" in n)
    base_before = {n: p.data.copy() for n, p in peft.named_parameters() if not p.requires_grad}
    data = data_of()
    trainer_for(dpo, data, tmp_path, learning_rate=3e-2).train()
    assert any(np.abs(p.data).max() > 0 for n, p in peft.named_parameters() if "lora_B" in n)   # trained
    assert all(np.array_equal(p.data, base_before[n]) for n, p in peft.named_parameters() if not p.requires_grad)
    x, y = data.get_batch("val", 2, T, np.random.default_rng(3))
    dpo.cache_reference = False
    dpo.train()
    ref = dpo.reference_logprobs(x, y)
    assert np.array_equal(ref, dpo.reference_logprobs(x, y)) and dpo.model.training
    np.testing.assert_allclose(ref, summed_logps(plain, x, y), rtol=1e-5)
    assert not np.allclose(dpo.policy_logprobs(x, y).numpy(), ref, rtol=1e-4)
    # the run saved only the LoRA weights, under "model."
    state = load_checkpoint(tmp_path / "run")["model"]
    assert state and all(k.startswith("model.") and "lora_" in k for k in state)


def test_a_short_training_separates_a_separable_preference_set(tmp_path):
    """Chosen always "yes", rejected always "no": validation prompts are new, the replies are not."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefgh"), 5)) for _ in range(24)]
    pairs = [{"prompt": f"Is {w} fine?", "chosen": "yes", "rejected": "no"} for w in words]
    data = PreferenceData(pairs[:16], pairs[16:], TOK)
    dpo = DPOModel(tiny(), beta=0.1)
    start = evaluate_pairs(dpo, data, "val")
    trainer_for(dpo, data, tmp_path, batch_size=4, max_iters=15, eval_interval=15, learning_rate=1e-2).train()
    end = evaluate_pairs(dpo, data, "val")
    assert start["rewards/accuracy"] == 0.0 and start["rewards/margin"] == 0.0
    assert end["rewards/accuracy"] == 1.0 and end["rewards/margin"] > 0.5 and end["loss"] < 0.5


# ---- pairs of the built-in task --------------------------------------------------------------------

def test_task_pairs_are_the_answer_against_a_near_miss_the_judge_ranks_lower():
    pairs = task_preference_pairs("train", 200, seed=3)
    assert pairs == task_preference_pairs("train", 200, seed=3)
    assert {p["family"] for p in pairs} == {"reverse", "sort", "uppercase", "add", "count"}
    for p in pairs:
        assert is_correct(p["prompt"], p["chosen"]) and not is_correct(p["prompt"], p["rejected"])
        assert judge(p["prompt"], p["chosen"], p["rejected"]) == 0
        assert edit_distance(p["chosen"], p["rejected"]) == 1
        if p["family"] in ("add", "count"):
            assert p["rejected"].isdigit() and (p["rejected"] == "0" or p["rejected"][0] != "0")
    with pytest.raises(ValueError, match="no letter or digit"):
        corrupt_answer(" ", np.random.default_rng(0))


# ---- the command -------------------------------------------------------------------------------------



RUN = ["--max_iters", "3", "--eval_interval", "3", "--eval_iters", "1", "--batch_size", "4", "--seq_len", "100",
       "--quiet"]


def test_dpo_command_on_the_builtin_task_then_resume_and_chat(chat_base, monkeypatch, capsys):
    from tinygrad_lm import cli
    monkeypatch.chdir(chat_base)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(chat_base / "cache"))
    args = ["dpo", "--policy", "base", "--task", "builtin", "--task-size", "20", "--out", "run", "--beta", "0.2"]
    assert cli.main(args + RUN) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "the built-in task's pairs (20 + 50 pairs)" in out and "step 3:" in out and "50 validation pairs" in out
    ev = json.loads((chat_base / "run" / "dpo_eval.json").read_text())
    assert ev["pairs"] == 50 and ev["beta"] == 0.2 and 0 <= ev["rewards/accuracy"] <= 1
    meta = load_checkpoint(chat_base / "run")["meta"]["finetune"]
    assert meta["phase"] == "dpo" and meta["data"]["beta"] == 0.2 and meta["data"]["reference"] == "copy"
    assert cli.main(["dpo", "--resume", "--out", "run", "--beta", "0.3", "--max_iters", "4", "--quiet"]) == 2
    assert "keeps its --beta" in capsys.readouterr().err
    assert cli.main(["dpo", "--resume", "--out", "run", "--max_iters", "4", "--quiet"]) == 0
    assert "resuming from iter 3" in capsys.readouterr().out
    assert cli.main(["chat", "--ckpt", "run", "--message", "Reverse the word: stone", "--max-new-tokens", "5"]) == 0
    assert cli.main(["generate", "--ckpt", "run", "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    capsys.readouterr()
    # a DPO run is a policy to start from: --policy takes a run folder as --ckpt
    assert cli.main(["dpo", "--policy", "run", "--task", "builtin", "--task-size", "20", "--out", "run2"] + RUN) == 0
    assert load_checkpoint(chat_base / "run2")["meta"]["finetune"]["base"] == {"ckpt": str(chat_base / "run")}
    capsys.readouterr()
    assert cli.main(["dpo", "--policy", "base", "--model", "base", "--task", "builtin", "--out", "r3"]) == 2
    assert cli.main(["dpo", "--model", "base", "--task", "builtin", "--data", "x.jsonl", "--out", "r3"]) == 2


def test_dpo_command_on_jsonl_with_lora(chat_base, monkeypatch, capsys):
    from tinygrad_lm import cli
    from tinygrad_lm.align.jsonl import write_jsonl
    monkeypatch.chdir(chat_base)
    monkeypatch.setenv("TINYGRAD_LM_CACHE", str(chat_base / "cache"))
    write_jsonl(chat_base / "prefs.jsonl", [{"prompt": f"Say {i}", "chosen": str(i), "rejected": str(i + 1)}
                                            for i in range(10)], kind="preference")
    args = ["dpo", "--model", "base", "--data", "prefs.jsonl", "--method", "lora", "--out", "run_l"] + RUN
    assert cli.main(args) == 0, capsys.readouterr().err
    assert "lora: training" in capsys.readouterr().out
    assert (chat_base / "run_l" / "adapter_config.json").is_file()
    assert load_checkpoint(chat_base / "run_l")["meta"]["finetune"]["data"]["reference"] == "adapter"
    assert json.loads((chat_base / "run_l" / "dpo_eval.json").read_text())["pairs"] == 1
    assert cli.main(["generate", "--model", "base", "--adapter", "run_l", "--prompt", "hi",
                     "--max-new-tokens", "3"]) == 0


def test_a_reward_runs_pairs_keep_their_split(tmp_path):
    from tinygrad_lm.align.jsonl import write_jsonl
    from tinygrad_lm.cli.dpo import build_data
    rows = [{"prompt": f"Say {i}", "chosen": str(i), "rejected": str(i + 1)} for i in range(6)]
    tagged = [{**r, "split": "train" if i < 4 else "validation"} for i, r in enumerate(rows)]
    write_jsonl(tmp_path / "pairs.jsonl", tagged)
    data = build_data({"jsonl": str(tmp_path / "pairs.jsonl")}, TOK)
    assert (data.num_pairs("train"), data.num_pairs("val")) == (4, 2)
    write_jsonl(tmp_path / "plain.jsonl", rows)
    data = build_data({"jsonl": str(tmp_path / "plain.jsonl")}, TOK)
    assert (data.num_pairs("train"), data.num_pairs("val")) == (5, 1)
