"""PPO (align.ppo, `tinygrad-lm ppo`): rollouts scored by a reward model, the KL penalty against the
frozen start, GAE, clipped losses, and the rounds the one Trainer trains through."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tinygrad_lm as tg
from tinygrad_lm.align.losses import token_logprobs
from tinygrad_lm.align.ppo import BATCH_KEYS, PPOModel, RolloutData, collect_rollouts, kl_controller
from tinygrad_lm.align.reward import RewardModel
from tinygrad_lm.gradcheck import gradcheck
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.tensor import manual_seed
from tinygrad_lm.tokenizers import ByteTokenizer

from conftest import CHAT_TOKENS
from strategies import parameters_as_inputs

TOK = ByteTokenizer(CHAT_TOKENS)
PROMPTS = ["Reverse the word: abc", "What is 2 + 3?", "Uppercase: hi there", "How many letters are in: qwe"]


class LetterReward:
    """A scripted reward model: the share of a reply's characters that are ASCII letters (what a
    byte-level policy can learn in a few updates: half of its first samples' bytes are ASCII)."""

    def score_replies(self, tokenizer, prompts, replies):
        assert len(prompts) == len(replies)
        return np.array([sum(c.isascii() and c.isalpha() for c in r) / max(len(r), 1) for r in replies])


def tiny_policy(seed=0, **kw):
    cfg = dict(vocab_size=TOK.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)
    cfg.update(kw)
    manual_seed(seed)
    return GPT(GPTConfig(**cfg))


def rollouts(ppo, kl_coef=0.05, **kw):
    return collect_rollouts(ppo, TOK, PROMPTS, LetterReward(), kl_coef=kl_coef, seed=3, max_new_tokens=6, **kw)


# ---- one round of rollouts ---------------------------------------------------------------------------

def test_rollout_arrays_line_up_with_the_replies():
    ppo = PPOModel(tiny_policy())
    ro = rollouts(ppo)
    N, W = ro["x"].shape
    assert N == len(PROMPTS) and all(ro[k].shape == (N, W) for k in BATCH_KEYS)
    for b in range(N):
        cols = np.flatnonzero(ro["mask"][b])
        assert len(cols) == ro["length"][b] and np.all(np.diff(cols) == 1)   # one contiguous reply
        reply = ro["targets"][b, cols]
        assert TOK.decode([t for t in reply if t != TOK.token_id("<|im_end|>")]) == ro["replies"][b]
        assert np.all(ro["targets"][b, ~ro["mask"][b]] == -1)             # nothing else is trained on
        # x is the conversation shifted: position t predicts targets[t] = x[t + 1]
        np.testing.assert_array_equal(ro["x"][b, cols[1:]], ro["targets"][b, cols[:-1]])
    # old log-probs are the policy's own, computed independently
    logits, _ = ppo.model(ro["x"], all_logits=True)
    np.testing.assert_allclose(ro["old_logprobs"], token_logprobs(logits, ro["targets"]).data, atol=1e-5)


def test_kl_is_zero_at_the_start_and_the_score_sits_on_the_last_token():
    """The reference is the policy as wrapped: every per-token KL is exactly 0 at first. With a zero
    value head and no KL, GAE (gamma 1, lambda 0.95) gives returns lambda^(steps to the end) * score."""
    ppo = PPOModel(tiny_policy())
    ro = rollouts(ppo, kl_coef=0.0, missing_eos_penalty=0.0)
    assert np.all(ro["kl"] == 0) and np.all(ro["old_values"] == 0)
    for b in range(len(PROMPTS)):
        cols = np.flatnonzero(ro["mask"][b])
        to_end = cols[-1] - cols
        np.testing.assert_allclose(ro["returns"][b, cols], 0.95 ** to_end * ro["scores"][b], rtol=1e-5, atol=1e-7)
    adv = ro["advantages"][ro["mask"]]
    assert abs(adv.mean()) < 1e-5 and adv.std(ddof=1) == pytest.approx(1, abs=1e-3)   # whitened


def test_missing_eos_penalty_and_kl_in_the_rewards():
    ppo = PPOModel(tiny_policy())
    plain = rollouts(ppo, missing_eos_penalty=0.0)
    punished = rollouts(ppo, missing_eos_penalty=2.0)
    assert not plain["ended"].any()             # an untrained model does not stop within 6 tokens
    np.testing.assert_allclose(punished["scores"], plain["scores"] - 2.0)
    # after the policy moves, the reference does not: KL appears, with the k1 estimator's value
    for p in ppo.model.parameters():
        p.data += 0.05 * np.random.default_rng(0).standard_normal(p.shape).astype(p.dtype)
    moved = rollouts(ppo)
    ref = token_logprobs(ppo.reference_logits(moved["x"]), moved["targets"]).data
    np.testing.assert_allclose(moved["kl"], np.where(moved["mask"], moved["old_logprobs"] - ref, 0).sum(axis=1),
                               rtol=1e-4, atol=1e-5)
    assert np.abs(moved["kl"]).max() > 0


# ---- the loss ----------------------------------------------------------------------------------------

def test_first_update_has_ratio_one_and_no_clipping():
    ppo = PPOModel(tiny_policy())
    ro = rollouts(ppo)
    ppo(*(ro[k] for k in BATCH_KEYS))
    s = ppo.last_stats
    assert s["policy/ratio"] == pytest.approx(1.0, abs=1e-6) and s["policy/approxkl"] == pytest.approx(0, abs=1e-7)
    assert s["policy/clipfrac"] == 0 and s["value/clipfrac"] == 0 and s["policy/entropy"] > 0


def test_gradcheck_of_the_ppo_loss_float64():
    """Policy, value head and body together, away from the first update (the ratio is not 1)."""
    ppo = PPOModel(tiny_policy(n_embd=8, block_size=48)).double()
    ro = rollouts(ppo)
    rng = np.random.default_rng(1)
    for p in ppo.parameters():
        p.data += 0.02 * rng.standard_normal(p.shape)
    batch = [ro[k] for k in BATCH_KEYS]
    params, fn, restore = parameters_as_inputs(ppo, lambda: ppo(*batch)[1])
    try:
        assert fn(*params).dtype == np.float64
        assert gradcheck(fn, params, directional=True, seed=0)
        head = [p.detach().requires_grad_(i >= len(params) - 2) for i, p in enumerate(params)]
        assert gradcheck(fn, head)                   # the value head alone, every entry
    finally:
        restore()


# ---- rounds ------------------------------------------------------------------------------------------

def rollout_data(ppo, **kw):
    prompts = {"train": PROMPTS * 2, "val": PROMPTS[:2]}
    opts = dict(rollout_batch=4, ppo_epochs=2, seed=0, eval_prompts=2, max_new_tokens=5, kl=kl_controller(0.05))
    opts.update(kw)
    return RolloutData(prompts, TOK, LetterReward(), **opts).attach(ppo)


def test_rounds_serve_every_rollout_once_per_epoch():
    ppo = PPOModel(tiny_policy())
    data = rollout_data(ppo)
    assert data.updates_per_round(2) == 4
    batches = [data.get_batch("train", 2, 60) for _ in range(4)]
    assert data.round == 1 and ppo.rollout_stats["rollout/round"] == 0
    seen = np.concatenate([b[0] for b in batches])                 # each rollout's x, twice in all
    rows = {r.tobytes() for r in data._buffer["x"]}
    assert all(np.concatenate([r, np.zeros(data._buffer["x"].shape[1] - len(r), r.dtype)]).tobytes() in rows
               for r in seen)
    data.get_batch("train", 2, 60)
    assert data.round == 2                                         # the fifth update starts a new round
    with pytest.raises(ValueError, match="multiple of batch_size"):
        rollout_data(ppo).get_batch("train", 3, 60)
    with pytest.raises(ValueError, match="only 'train'"):
        data.get_batch("val", 2, 60)
    with pytest.raises(RuntimeError, match="attach"):
        RolloutData({"train": PROMPTS, "val": PROMPTS}, TOK, LetterReward()).get_batch("train", 2, 60)


def test_adaptive_kl_coefficient_moves_after_a_round_and_is_saved():
    ppo = PPOModel(tiny_policy())
    for p in ppo.model.parameters():                               # far from the reference: KL above target
        p.data += 0.3 * np.random.default_rng(0).standard_normal(p.shape).astype(p.dtype)
    data = rollout_data(ppo, kl=kl_controller(0.1, target_kl=1e-3, horizon=10))
    data.get_batch("train", 2, 60)
    assert data.kl.value > 0.1
    state = json.loads(json.dumps(data.state_dict()))
    fresh = rollout_data(ppo, kl=kl_controller(0.1, target_kl=1e-3, horizon=10))
    fresh.load_state_dict(state)
    assert fresh.round == 1 and fresh.kl.value == data.kl.value


def test_ppo_raises_the_reward():
    """Twenty updates on the letter reward lift the mean score of fresh samples."""
    manual_seed(0)
    ppo = PPOModel(tiny_policy())
    data = rollout_data(ppo, rollout_batch=8, ppo_epochs=2, eval_prompts=8, kl=kl_controller(0.0))
    opt = ppo.configure_optimizers(0.0, 3e-2)
    before = -data.evaluate()["train"]
    for _ in range(24):
        _, loss = ppo(*data.get_batch("train", 4, 60))
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = -data.evaluate()["train"]
    assert after > before + 0.1, (before, after)


def test_value_head_and_reference_stay_out_of_the_way():
    ppo = PPOModel(tiny_policy())
    names = list(ppo.state_dict())
    assert names[0].startswith("model.transformer.") and names[-2:] == ["value_head.weight", "value_head.bias"]
    assert not np.any(ppo.value_head.weight.data)                   # zero init
    ppo.train()
    assert not ppo.model.training and not ppo.reference.training   # no dropout in either
    with pytest.raises(ValueError, match="cliprange"):
        PPOModel(tiny_policy(), cliprange=0)
    with pytest.raises(ValueError, match="target_kl"):
        kl_controller(0.1, target_kl=-1)


# ---- the command -------------------------------------------------------------------------------------

def run_cli(args, capsys):
    from tinygrad_lm import cli
    rc = cli.main(args)
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.out


PPO_FLAGS = ["--task", "builtin", "--task-size", "16", "--rollout-batch", "4", "--batch_size", "2",
             "--ppo-epochs", "1", "--max-new-tokens", "6", "--eval-prompts", "2", "--eval_interval", "2",
             "--lr_decay_iters", "4", "--quiet"]


def test_ppo_command_runs_resumes_exactly_and_loads(chat_base, monkeypatch, capsys):
    from tinygrad_lm import cli
    from tinygrad_lm.checkpoint import load_checkpoint
    from tinygrad_lm.cli.common import load_model
    from tinygrad_lm.peft.finetune import run_meta
    monkeypatch.chdir(chat_base)
    rm = RewardModel(GPT.from_pretrained(chat_base / "base"))
    rm.save(chat_base / "rm", TOK, run_meta("full", None, {"model": str(chat_base / "base")}, None))
    out = run_cli(["ppo", "--policy", "base", "--reward", "rm", "--out", "run", "--max_iters", "4", *PPO_FLAGS],
                  capsys)
    assert "step 4:" in out and "validation prompts sampled" in out
    log = [json.loads(s) for s in (chat_base / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if not r.get("eval")]
    assert {"objective/kl", "objective/scores", "policy/clipfrac", "policy/entropy", "rollout/length"} <= set(steps[0])
    assert json.loads((chat_base / "run" / "ppo_eval.json").read_text())["iter"] == 4
    # stopped after 2 updates (a round boundary) and resumed: the same run
    run_cli(["ppo", "--policy", "base", "--reward", "rm", "--out", "half", "--max_iters", "2", *PPO_FLAGS], capsys)
    run_cli(["ppo", "--resume", "--out", "half", "--max_iters", "4", "--quiet"], capsys)
    a, b = load_checkpoint(chat_base / "run")["model"], load_checkpoint(chat_base / "half")["model"]
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    model, tok, _ = load_model(chat_base / "run", "cpu")
    assert isinstance(model, GPT) and model.config.n_embd == 32
    # bad input, each refused with a clear message before training
    bad = [["--eval_interval", "3"], ["--rollout-batch", "3"]]
    for extra in bad:
        assert cli.main(["ppo", "--policy", "base", "--reward", "rm", "--out", "bad", "--max_iters", "4", *PPO_FLAGS,
                         *extra]) == 2
    assert cli.main(["ppo", "--policy", "base", "--task", "builtin", "--out", "bad2"]) == 2
    assert "--reward" in capsys.readouterr().err
    assert cli.main(["ppo", "--resume", "--out", "run", "--reward", "rm"]) == 2
