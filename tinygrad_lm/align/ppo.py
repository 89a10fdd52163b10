"""PPO from a reward model, InstructGPT-style (Ouyang et al. 2022; Ziegler et al. 2019), as a
module and a batch source that the one Trainer trains.

A *round*: take ``rollout_batch`` prompts, let the policy answer each once (the KV-cached sampler,
temperature 1, cut after the end-of-turn token), score each reply with the frozen reward model,
and turn that into per-token training signal:

    kl_t      = log pi_old(a_t) - log ref(a_t)                  per reply token (the k1 estimator)
    r_t       = -kl_coef * kl_t  (+ score at the reply's last token; - missing_eos_penalty there
                                  when the reply never ended)
    A_t, R_t  = GAE(r, V_old; gamma 1, lambda 0.95); A whitened over the round's reply tokens

then ``ppo_epochs`` passes over the round in shuffled minibatches (the Trainer's batch_size), each
one optimizer step of  loss = clipped policy loss (0.2) + vf_coef * clipped value loss (0.2).
The reference is the policy as it was when wrapped (align.phase.PolicyPhase). The value head reads
the policy's own hidden states (TRL's "value head" model; ScalarHead with zero init, so the first
values are 0 and the first advantages are the rewards). The policy runs without dropout, as TRL
advises for PPO: pi_old and pi agree exactly at a round's first update.

The KL coefficient is fixed or adaptive (Ziegler et al.'s controller toward a target KL, updated
after each round). ``last_stats`` (in log.jsonl) holds the round's objective/scores, objective/kl,
objective/kl_coef, response length and share of replies that ended, the built-in task's exact
match, and the last update's policy/clipfrac, policy/approxkl, policy/entropy, value/clipfrac and
losses. Each evaluation samples fixed training and validation prompts afresh (fixed seeds) and
reports the negated RLHF objective, -(score - kl_coef * KL), as the "loss" the Trainer prints.

Resuming is exact from a checkpoint at a round boundary (the CLI evaluates and saves only there):
a round's prompts, samples and shuffles depend on (seed, round) alone. A run stopped by Ctrl-C in
the middle of a round resumes with a fresh round from the policy as it was saved."""
from __future__ import annotations

import math

import numpy as np

from .. import backend
from ..nn import Module
from ..tensor import Tensor, host_array, no_grad
from ..tokenizers.chat import end_of_turn_ids
from .evaluate import MAX_NEW_TOKENS
from .heads import ScalarHead
from .losses import (AdaptiveKLController, FixedKLController, entropy_from_logits, gae, kl_penalty,
                     ppo_policy_loss, ppo_value_loss, token_logprobs, whiten)
from .phase import PolicyPhase
from .reward import prompt_ids, reply_text, sample_reply_ids
from .sft import chat_template_of
from .tasks import is_correct

__all__ = ["PPOModel", "RolloutData", "collect_rollouts", "kl_controller"]

IGNORE = -1


class PPOModel(PolicyPhase):
    """The policy (``model``: a GPT or PeftModel) with a value head (``value_head``), trained by PPO
    against a frozen reference. forward(x, targets, mask, old_logprobs, old_values, advantages,
    returns) -> (values, loss): one minibatch of RolloutData; every array (B, T), aligned with x
    (position t predicts targets[:, t]; mask marks the reply tokens)."""

    def __init__(self, policy: Module, value_head: ScalarHead | None = None, *, reference: str | None = None,
                 cliprange: float = 0.2, cliprange_value: float = 0.2, vf_coef: float = 0.1):
        for name, v in (("cliprange", cliprange), ("cliprange_value", cliprange_value), ("vf_coef", vf_coef)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"PPO: {name} must be a finite number > 0, got {v!r}")
        PolicyPhase.__init__(self, policy, reference, "PPO")
        ref = policy.transformer.wte.weight          # the body's device and float dtype
        self.value_head = (value_head if value_head is not None else
                           ScalarHead(policy.config.n_embd, zero_init=True)).to(ref.device, ref.dtype)
        self.cliprange, self.cliprange_value, self.vf_coef = float(cliprange), float(cliprange_value), float(vf_coef)
        self.last_stats: dict = {}
        self.rollout_stats: dict = {}                # the current round's, set by RolloutData
        self.train(policy.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()      # no dropout: pi_old and pi agree at a round's first update
        return self

    def logits_values(self, x):
        """Token ids x (B, T) -> (logits (B, T, V), values (B, T)), from one pass of the body."""
        h = self.model.hidden_states(x)                                # (B, T, C)
        return self.model.lm_head(h), self.value_head(h)

    def forward(self, x, targets, mask, old_logprobs, old_values, advantages, returns):
        logits, values = self.logits_values(x)
        logp = token_logprobs(logits, targets, mask)                   # (B, T), 0 off the replies
        pg_loss, pg_stats = ppo_policy_loss(logp, old_logprobs, advantages, mask, self.cliprange)
        vf_loss, vf_stats = ppo_value_loss(values, old_values, returns, mask, self.cliprange_value)
        loss = pg_loss + vf_loss * self.vf_coef
        with no_grad():   # a statistic: the reply positions' logits only, not the whole (B, T, V)
            rows = logits.data[backend.xp_of(logits.data).asarray(mask).astype(bool)]          # (n, V)
            entropy = entropy_from_logits(Tensor._wrap(rows, False)).mean()
        self.last_stats = {**self.rollout_stats, "loss/policy": pg_loss.item(), "loss/value": vf_loss.item(),
                           **pg_stats, **vf_stats, "policy/entropy": entropy.item()}
        return values, loss


def kl_controller(kl_coef: float, target_kl: float | None = None, horizon: float = 10000):
    """Fixed coefficient, or with ``target_kl`` the adaptive one of Ziegler et al. (starting at kl_coef)."""
    if not (math.isfinite(kl_coef) and kl_coef >= 0):
        raise ValueError(f"PPO: kl_coef must be a finite number >= 0, got {kl_coef}")
    if target_kl is None:
        return FixedKLController(kl_coef)
    if not (math.isfinite(target_kl) and target_kl > 0):
        raise ValueError(f"PPO: target_kl must be a finite number > 0, got {target_kl}")
    return AdaptiveKLController(kl_coef, target_kl, horizon)


@no_grad()
def collect_rollouts(ppo: PPOModel, tokenizer, prompts: list[str], reward_model, reward_tokenizer=None, *,
                     kl_coef: float, seed: int, temperature: float = 1.0, top_k: int | None = None,
                     max_new_tokens: int = MAX_NEW_TOKENS, missing_eos_penalty: float = 1.0, gamma: float = 1.0,
                     lam: float = 0.95, kl_estimator: str = "k1", chunk: int = 16) -> dict:
    """One reply per prompt from the policy, scored and turned into PPO's training arrays.

    Returns {"x", "targets", "mask", "old_logprobs", "old_values", "advantages", "returns"}: (N, W)
    arrays as PPOModel.forward takes them (N prompts, W the longest prompt + reply less one), and
    per-reply (N,) "scores" (the reward model's, less the missing-EOS penalty), "kl" (summed over
    the reply), "length", "ended", "correct" (the built-in task's exact match; False for other
    prompts), with "replies" (texts)."""
    template = chat_template_of(tokenizer)
    stop_ids = end_of_turn_ids(template, tokenizer)
    rows, replies, texts = [], [], []
    for _, pids, (reply,) in sample_reply_ids(ppo.model, tokenizer, prompts, 1, temperature, top_k,
                                              max_new_tokens, seed):
        rows.append((pids, reply))
        replies.append(reply)
        texts.append(reply_text(tokenizer, reply, stop_ids))
    N = len(rows)
    ended = np.array([len(r) > 0 and r[-1] in stop_ids for r in replies])
    scores = host_array(reward_model.score_replies(reward_tokenizer or tokenizer, prompts, texts)).astype(np.float64)
    scores = scores - missing_eos_penalty * ~ended
    W = max(len(p) + len(r) for p, r in rows) - 1
    x = np.zeros((N, W), dtype=np.int64)
    targets = np.full((N, W), IGNORE, dtype=np.int64)
    mask = np.zeros((N, W), dtype=bool)
    for b, (p, r) in enumerate(rows):
        ids = np.concatenate([p, r])
        x[b, :len(ids) - 1] = ids[:-1]
        targets[b, :len(ids) - 1] = ids[1:]
        mask[b, len(p) - 1:len(ids) - 1] = True          # position t predicts reply token t - len(p) + 1
    targets = np.where(mask, targets, IGNORE)
    old_logp = np.zeros((N, W), dtype=np.float64)
    ref_logp = np.zeros((N, W), dtype=np.float64)
    values = np.zeros((N, W), dtype=np.float64)
    device = ppo.device
    for s in range(0, N, chunk):
        xb = backend.to_device(x[s:s + chunk], device)
        logits, v = ppo.logits_values(xb)
        old_logp[s:s + chunk] = host_array(token_logprobs(logits, targets[s:s + chunk]).data)
        ref_logp[s:s + chunk] = host_array(token_logprobs(ppo.reference_logits(xb), targets[s:s + chunk]).data)
        values[s:s + chunk] = host_array(v.data)
    kl = np.where(mask, kl_penalty(old_logp, ref_logp, kl_estimator), 0.0)
    rewards = -kl_coef * kl
    last = np.array([len(p) + len(r) - 2 for p, r in rows])   # the position that predicted the last reply token
    rewards[np.arange(N), last] += scores
    adv, ret = gae(rewards, values, mask=mask, gamma=gamma, lam=lam)
    adv = whiten(adv, mask)
    dtype = ppo.value_head.weight.dtype
    correct = []
    for p, t in zip(prompts, texts):
        try:
            correct.append(is_correct(p, t))
        except ValueError:                                      # not a prompt of the built-in task
            correct.append(False)
    return {"x": x, "targets": targets, "mask": mask, "old_logprobs": old_logp.astype(dtype),
            "old_values": np.where(mask, values, 0).astype(dtype), "advantages": adv.astype(dtype),
            "returns": ret.astype(dtype), "scores": scores, "kl": kl.sum(axis=1),
            "length": np.array([len(r) for r in replies]), "ended": ended, "correct": np.array(correct),
            "replies": texts}


BATCH_KEYS = ("x", "targets", "mask", "old_logprobs", "old_values", "advantages", "returns")


def _summary(ro: dict, kl_coef: float) -> dict:
    """A round's (or an evaluation's) statistics, TRL-named where TRL has the name."""
    return {"objective/scores": float(ro["scores"].mean()), "objective/kl": float(ro["kl"].mean()),
            "objective/rlhf_reward": float((ro["scores"] - kl_coef * ro["kl"]).mean()),
            "objective/kl_coef": float(kl_coef), "rollout/length": float(ro["length"].mean()),
            "rollout/ended": float(ro["ended"].mean()), "rollout/correct": float(ro["correct"].mean())}


class RolloutData:
    """PPO's batch source: rounds of rollouts from the policy, served as minibatches.

    ``prompts``: {"train": [...], "val": [...]} user messages. ``attach(ppo)`` gives it the policy
    (PPOModel) before training. get_batch("train", batch_size, ...) returns the next minibatch of
    the current round (BATCH_KEYS, each (batch_size, W)), collecting a new round when the last one's
    ``ppo_epochs`` passes are spent; rollout_batch must be a multiple of batch_size."""

    def __init__(self, prompts: dict, tokenizer, reward_model, reward_tokenizer=None, *, rollout_batch: int = 64,
                 ppo_epochs: int = 4, kl=None, seed: int = 0, eval_prompts: int = 32, source: str = "prompts",
                 **rollout_options):
        for split in ("train", "val"):
            if not prompts.get(split):
                raise ValueError(f"PPO needs {split} prompts, got none")
        for name, v in (("rollout_batch", rollout_batch), ("ppo_epochs", ppo_epochs), ("eval_prompts", eval_prompts)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"PPO: {name} must be a positive integer, got {v!r}")
        self.prompts = {s: list(prompts[s]) for s in ("train", "val")}
        self.tokenizer, self.reward_model, self.reward_tokenizer = tokenizer, reward_model, reward_tokenizer
        self.rollout_batch, self.ppo_epochs, self.seed, self.eval_prompts = rollout_batch, ppo_epochs, seed, eval_prompts
        self.kl = kl if kl is not None else kl_controller(0.05)
        self.options = rollout_options
        self.source = source
        self.round = 0                                   # the next round to collect
        self.ppo: PPOModel | None = None
        self._buffer, self._order, self._cursor = None, [], 0
        template = chat_template_of(tokenizer)
        enc = {s: [prompt_ids(tokenizer, template, p) for p in ps] for s, ps in self.prompts.items()}
        self._prompt_lengths = {s: max(len(e) for e in v) for s, v in enc.items()}
        self.train, self.val = (np.concatenate([np.asarray(e, dtype=np.int64) for e in enc[s]]) for s in ("train", "val"))
        self._perm = np.random.default_rng([seed, 7]).permutation(len(self.prompts["train"]))

    @property
    def num_tokens(self) -> int:
        return len(self.train) + len(self.val)

    def attach(self, ppo: PPOModel) -> "RolloutData":
        self.ppo = ppo
        return self

    def check_block_size(self, block_size: int) -> None:
        """Every prompt leaves room for a reply in the context."""
        for split, n in self._prompt_lengths.items():
            if n >= block_size:
                raise ValueError(f"the longest {split} prompt of {self.source} is {n} tokens, which leaves no room "
                                 f"for a reply in the model's {block_size} positions")

    # ---- rounds -------------------------------------------------------------------------------
    def _rollouts(self, prompts, seed):
        if self.ppo is None:
            raise RuntimeError("RolloutData: attach(ppo_model) before asking for batches")
        return collect_rollouts(self.ppo, self.tokenizer, prompts, self.reward_model, self.reward_tokenizer,
                                kl_coef=self.kl.value, seed=seed, **self.options)

    def _collect(self, batch_size: int) -> None:
        if self.rollout_batch % batch_size:
            raise ValueError(f"PPO: rollout_batch ({self.rollout_batch}) must be a multiple of batch_size "
                             f"({batch_size}): every rollout is used once per epoch")
        n = len(self.prompts["train"])
        picks = self._perm[(self.round * self.rollout_batch + np.arange(self.rollout_batch)) % n]
        seed = int(np.random.default_rng([self.seed, self.round]).integers(2 ** 63))
        ro = self._rollouts([self.prompts["train"][i] for i in picks], seed=seed)
        coef = self.kl.value
        self.kl.update(float(ro["kl"].mean()), self.rollout_batch)
        self.ppo.rollout_stats = {**_summary(ro, coef), "rollout/round": self.round}
        rng = np.random.default_rng([self.seed, self.round, 1])
        order = np.concatenate([rng.permutation(self.rollout_batch) for _ in range(self.ppo_epochs)])
        self._order = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self._buffer, self._cursor = ro, 0
        self.round += 1

    def updates_per_round(self, batch_size: int) -> int:
        return self.ppo_epochs * self.rollout_batch // batch_size

    def get_batch(self, split: str, batch_size: int, block_size: int, rng=None):
        if split != "train":
            raise ValueError("PPO's evaluation samples its own rollouts (RolloutData.evaluate); only 'train' batches")
        if self._buffer is None or self._cursor >= len(self._order):
            self._collect(batch_size)
        picks = self._order[self._cursor]
        self._cursor += 1
        ro = self._buffer
        w = int(np.flatnonzero(ro["mask"][picks].any(axis=0)).max()) + 1   # no column after the longest reply
        return tuple(ro[k][picks, :w] for k in BATCH_KEYS)

    def evaluate(self, model=None) -> dict:
        """Fresh samples (fixed seeds) on the first eval_prompts training and validation prompts:
        {"train", "val"}: the negated RLHF objective -(score - kl_coef KL); and the validation
        statistics (objective/*, rollout/*) under "val/..."."""
        out = {}
        for split in ("train", "val"):
            ps = self.prompts[split][:self.eval_prompts]
            s = _summary(self._rollouts(ps, seed=self.seed + (split == "val")), self.kl.value)
            out[split] = -s["objective/rlhf_reward"]
            if split == "val":
                out.update({f"val/{k}": v for k, v in s.items()})
        return out

    # ---- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The next round and the KL coefficient: a checkpoint at a round boundary resumes exactly."""
        return {"round": self.round, "kl": self.kl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.round = int(state["round"])
        self.kl.load_state_dict(state["kl"])
        self._buffer, self._order, self._cursor = None, [], 0
