"""Direct Preference Optimization (Rafailov et al. 2023) as a module the one Trainer trains.

``DPOModel(policy, beta=0.1)`` takes the preference batches of ``PreferenceData`` (2B rows: the
chosen replies, then the rejected ones in the same order) and returns ``(logps, loss)`` like a GPT
returns ``(logits, loss)``, so pre-training's loop trains it unchanged:

    logps  = log pi(reply | prompt), summed over the reply's tokens      (2B,) policy, with gradient
    ref    = the same under the frozen reference                         (2B,) constants
    reward = beta * (logps - ref)                                        the implicit reward
    loss   = mean over pairs of -log sigmoid(reward_chosen - reward_rejected)

The reference is the policy as it was when wrapped (align.phase.PolicyPhase: a frozen copy for
--method full, the base with its adapter disabled for a PeftModel).
A batch is first cut to its longest sequence (``trim``), and the reference's log-prob of each row is cached
under a hash of the cut row: a batch whose rows are all cached skips the reference forward (a quarter
to a third of a training step, half of an evaluation's forward). The Trainer's evaluations draw the same
batches every time, so after the first they always skip it; training batches, drawn at random and
cut to varying widths, rarely do before many epochs. A row's log-prob does not depend on the other
rows of a batch of the same shape, so the cache never changes a result and a resumed run stays exact.
(TRL's precompute_ref_log_probs, one pass over the data before training, would let a full run drop
the copy altogether; not done here.)

At the start the policy is the reference: every reward and margin is 0 and the loss is log 2.
``last_stats`` holds the last batch's TRL-named statistics (rewards/chosen, rewards/rejected,
rewards/margin, rewards/accuracy, logps/chosen, logps/rejected, loss); ``evaluate_pairs`` gives the
same over every pair of a split.

``task_preference_pairs`` makes pairs from the built-in task without sampling: chosen is the
correct answer, rejected the answer with one character changed (edit distance 1), which the
scripted judge always ranks lower (it prefers a correct reply). Pairs ranked from the policy's own
samples come from the reward phase's pairs.jsonl instead (``read_jsonl(path, "preference")``)."""
from __future__ import annotations

import hashlib
import math
import string

import numpy as np

from .. import backend
from ..nn.module import Module
from ..tensor import Tensor, host_array, no_grad
from .losses import dpo_loss, sequence_logprobs
from .phase import REFERENCES, PolicyPhase
from .preferences import last_token_index
from .tasks import SPLITS, judge, task_split

__all__ = ["REFERENCES", "DPOModel", "trim", "evaluate_pairs", "corrupt_answer", "task_preference_pairs"]


def trim(x, y):
    """x, y without the columns after every row's last token: padding, which a causal model's
    log-probs of the earlier tokens never see (a batch is as wide as its longest sequence)."""
    w = int(last_token_index(host_array(y)).max()) + 1
    return x[:, :w], y[:, :w]


class DPOModel(PolicyPhase):
    """The policy (a GPT or a PeftModel, attribute ``model``) trained by DPO against a frozen reference.

    forward(x, y) -> (logps, loss): x, y (2B, T) as PreferenceData batches them; logps (2B,) the
    policy's summed reply log-probs (a Tensor), loss the mean DPO loss. The module's parameters are
    the policy's, under "model.": the reference is neither trained nor saved."""

    def __init__(self, policy: Module, beta: float = 0.1, reference: str | None = None, cache_reference: bool = True):
        """reference: "copy", "adapter" or None (the default for the policy: align.phase.PolicyPhase)."""
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"DPO: beta must be a finite number > 0, got {beta!r}")
        PolicyPhase.__init__(self, policy, reference, "DPO")
        self.beta = float(beta)
        self.cache_reference = cache_reference
        self.last_stats: dict = {}
        self._cache: dict[bytes, np.generic] = {}
        self.train(policy.training)

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        self._cache.clear()            # a new dtype gives new values
        return self

    # ---- log-probs ------------------------------------------------------------------------------
    def policy_logprobs(self, x, y) -> Tensor:
        """(N,) summed log-probs of y's kept targets under the policy (with gradient)."""
        logits, _ = self.model(x, all_logits=True)             # (N, T, V)
        return sequence_logprobs(logits, y)

    @no_grad()
    def _reference_forward(self, x, y) -> np.ndarray:
        return host_array(sequence_logprobs(self.reference_logits(x), y).data)

    def reference_logprobs(self, x, y) -> np.ndarray:
        """(N,) summed log-probs under the reference (NumPy, constants), from the cache when every
        row has been seen at this width; otherwise the whole batch is computed (the shape a row's value
        was first computed in, so the same values) and cached."""
        if not self.cache_reference:
            return self._reference_forward(x, y)
        xh, yh = host_array(x), host_array(y)
        keys = [hashlib.blake2b(xh[i].tobytes() + yh[i].tobytes(), digest_size=16).digest() for i in range(len(xh))]
        if any(k not in self._cache for k in keys):
            for k, v in zip(keys, self._reference_forward(x, y)):
                self._cache.setdefault(k, v)
        return np.array([self._cache[k] for k in keys])

    def clear_reference_cache(self) -> None:
        self._cache.clear()

    # ---- the loss --------------------------------------------------------------------------------
    def forward(self, x, y):
        n = x.shape[0]
        if n % 2:
            raise ValueError(f"DPO: a batch holds chosen rows then rejected rows, so an even number; got {n}")
        B = n // 2
        x, y = trim(x, y)
        logps = self.policy_logprobs(x, y)                     # (2B,)
        ref = self.reference_logprobs(x, y)                    # (2B,)
        loss, stats = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], self.beta)
        lp = host_array(logps.data)
        self.last_stats = {"loss": loss.item(), **stats,
                           "logps/chosen": float(lp[:B].mean()), "logps/rejected": float(lp[B:].mean())}
        return logps, loss


def evaluate_pairs(model: DPOModel, data, split: str = "val", batch_size: int = 8) -> dict:
    """DPO's statistics over every pair of ``split`` of a PreferenceData, in order: the mean loss and
    implicit rewards, the margin, pair accuracy (chosen's reward strictly higher) and the mean
    summed log-probs, plus the number of pairs. In eval mode, no gradient."""
    n = data.num_pairs(split)
    room = model.config.block_size - model.num_virtual_tokens
    chosen, rejected, lp_c, lp_r = [], [], [], []
    was = model.training
    model.eval()
    try:
        with no_grad():
            for start in range(0, n, batch_size):
                picks = np.arange(start, min(start + batch_size, n))
                x, y = trim(*data.batch(split, picks, room))
                x, y = backend.to_device(x, model.device), backend.to_device(y, model.device)
                lp = host_array(model.policy_logprobs(x, y).data).astype(np.float64)
                ref = model.reference_logprobs(x, y).astype(np.float64)
                r = model.beta * (lp - ref)
                B = len(picks)
                chosen.append(r[:B])
                rejected.append(r[B:])
                lp_c.append(lp[:B])
                lp_r.append(lp[B:])
    finally:
        model.train(was)
    c, r = np.concatenate(chosen), np.concatenate(rejected)
    margin = c - r
    loss = np.logaddexp(0.0, -margin)                          # -log sigmoid(margin), stably
    return {"split": split, "pairs": n, "beta": model.beta, "loss": float(loss.mean()),
            "rewards/chosen": float(c.mean()), "rewards/rejected": float(r.mean()),
            "rewards/margin": float(margin.mean()), "rewards/accuracy": float((margin > 0).mean()),
            "logps/chosen": float(np.concatenate(lp_c).mean()), "logps/rejected": float(np.concatenate(lp_r).mean())}


# ---- pairs from the built-in task -----------------------------------------------------------------

def corrupt_answer(text: str, rng: np.random.Generator) -> str:
    """``text`` with one letter or digit replaced by a different one of its kind (lower case by lower
    case, upper by upper, digit by digit, never making a leading zero): a plausible near miss at
    edit distance 1. Spaces stay."""
    spots = [i for i, ch in enumerate(text) if ch.isascii() and ch.isalnum()]
    if not spots:
        raise ValueError(f"corrupt_answer: {text!r} has no letter or digit to change")
    i = spots[int(rng.integers(len(spots)))]
    ch = text[i]
    pool = (string.digits[1:] if i == 0 and len(text) > 1 else string.digits) if ch.isdigit() else \
        string.ascii_uppercase if ch.isupper() else string.ascii_lowercase
    pool = pool.replace(ch, "")
    return text[:i] + pool[int(rng.integers(len(pool)))] + text[i + 1:]


def task_preference_pairs(split: str, n: int, seed: int = 0) -> list[dict]:
    """``n`` preference pairs {"prompt", "chosen", "rejected", "family"} of the built-in task's
    ``split``: chosen the correct answer, rejected ``corrupt_answer`` of it. The scripted judge
    prefers chosen in every pair (checked). Deterministic in (split, n, seed)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), 1])   # apart from task_split's streams
    pairs = []
    for e in task_split(split, n, seed=seed):
        rejected = corrupt_answer(e["completion"], rng)
        if judge(e["prompt"], e["completion"], rejected) != 0:
            raise RuntimeError(f"the judge does not prefer the answer to {rejected!r} for {e['prompt']!r}")
        pairs.append({"prompt": e["prompt"], "chosen": e["completion"], "rejected": rejected, "family": e["family"]})
    return pairs
