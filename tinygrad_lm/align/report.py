"""The report card's numbers: how a chat model does on the built-in task's test prompts, next to
the SFT model it started from (`tinygrad-lm pipeline` writes them to report.md and report.json).

For each model, on the same test prompts:

    exact match     greedy replies (align.evaluate.reply, as `eval --task builtin`) that are the
                    answer exactly, per family and overall
    reward          the mean score a reward model (align.reward.RewardModel) gives those replies
    win rate        the scripted judge (tasks.judge) on the model's greedy reply against the SFT
                    model's, prompt by prompt: a win counts 1, a tie 1/2, a loss 0; so the SFT model
                    against itself is exactly 50%
    KL to SFT       a Monte-Carlo estimate of KL(pi || pi_sft): one reply per prompt sampled from pi
                    at temperature 1 (align.reward.sample_reply_ids), the sum over its tokens of
                    log pi(a_t) - log pi_sft(a_t) (losses.kl_penalty's k1), averaged over prompts.
                    Unbiased, so a single estimate can come out slightly below 0; 0 exactly for the
                    SFT model itself.

The KL sums over a reply's sampled token ids (align.reward.sample_reply_ids), including the
end-of-turn token that ended it (the policy chose to stop there): the same per-reply k1 sum that
PPO's rollouts penalise (align.ppo), here against the SFT model rather than PPO's own start."""
from __future__ import annotations

import numpy as np

from .. import backend
from ..tensor import host_array, no_grad
from .evaluate import MAX_NEW_TOKENS, reply
from .losses import kl_penalty, token_logprobs
from .reward import sample_reply_ids
from .sft import IGNORE, chat_template_of
from .tasks import FAMILIES, family_of, is_correct, judge

__all__ = ["COLUMNS", "greedy_replies", "exact_match", "win_rate", "reply_rows", "rows_token_logprobs", "sampled_kl"]

# report.json's keys of one stage's row, in the table's order
COLUMNS = (*FAMILIES, "all", "reward", "win_rate", "kl")


def greedy_replies(model, tokenizer, prompts, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """The model's greedy reply to each prompt, exactly as `eval --task builtin` makes them."""
    model.eval()
    template = chat_template_of(tokenizer)
    return [reply(model, tokenizer, p, max_new_tokens, template=template) for p in prompts]


def exact_match(prompts, replies) -> dict:
    """{family: share of exactly right replies, ..., "all": overall, "n": prompts}; families with no
    prompt are left out. The same numbers as align.evaluate.task_accuracy for the same replies."""
    if len(prompts) != len(replies) or not prompts:
        raise ValueError(f"exact_match: {len(prompts)} prompts and {len(replies)} replies (need as many, at least 1)")
    right = {f: [] for f in FAMILIES}
    for p, r in zip(prompts, replies):
        right[family_of(p)].append(is_correct(p, r))
    scores = {f: float(np.mean(v)) for f, v in right.items() if v}
    scores["all"] = float(np.mean([x for v in right.values() for x in v]))
    scores["n"] = len(prompts)
    return scores


def win_rate(prompts, replies, baseline_replies) -> float:
    """The share of prompts where the scripted judge prefers ``replies`` to ``baseline_replies``,
    a tie counting half: 0.5 exactly for a model against itself."""
    if not (len(prompts) == len(replies) == len(baseline_replies)) or not prompts:
        raise ValueError(f"win_rate: {len(prompts)} prompts, {len(replies)} replies and {len(baseline_replies)} "
                         "baseline replies (need as many of each, at least 1)")
    return float(np.mean([1.0 - judge(p, a, b) for p, a, b in zip(prompts, replies, baseline_replies)]))


def reply_rows(rows) -> tuple[np.ndarray, np.ndarray]:
    """x, y (N, W) of (prompt ids, reply ids) pairs, e.g. sample_reply_ids' (the reply through its
    end-of-turn token): x the prompt and reply less the last token, padded on the right; y[t] the
    token t + 1 where it is a reply token, -1 elsewhere (the prompt, padding)."""
    if not rows:
        raise ValueError("reply_rows: no (prompt, reply) rows")
    width = max(len(p) + len(r) for p, r in rows) - 1
    x = np.zeros((len(rows), width), dtype=np.int64)
    y = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for b, (p, r) in enumerate(rows):
        ids = np.concatenate([np.asarray(p, dtype=np.int64), np.asarray(r, dtype=np.int64)])
        x[b, :len(ids) - 1] = ids[:-1]
        y[b, len(p) - 1:len(ids) - 1] = ids[len(p):]           # position t predicts token t + 1
    return x, y


@no_grad()
def rows_token_logprobs(model, x, y, batch_size: int = 16) -> np.ndarray:
    """(N, T) float64 log-probs of y's kept targets under ``model`` (0 where y is -1), in eval mode."""
    room = model.config.block_size - model.num_virtual_tokens
    if x.shape[1] > room:
        raise ValueError(f"a prompt and its reply take {x.shape[1] + 1} tokens; the model's context is {room}")
    device = model.parameters()[0].device
    model.eval()
    out = np.zeros(x.shape, dtype=np.float64)
    for i in range(0, len(x), batch_size):
        xb, yb = backend.to_device(x[i:i + batch_size], device), y[i:i + batch_size]
        logits, _ = model(xb, all_logits=True)                  # (B, T, V)
        out[i:i + batch_size] = host_array(token_logprobs(logits, yb).data)
    return out


def sampled_kl(policy, reference, tokenizer, prompts, *, temperature: float = 1.0, max_new_tokens: int = MAX_NEW_TOKENS,
               seed: int = 0) -> dict:
    """KL(policy || reference) estimated on ``prompts``: one reply per prompt sampled from the policy,
    summed k1 = log policy - log reference over its tokens -> {"kl": mean over prompts, "kl_sem":
    its standard error, "tokens": mean reply length in tokens}. The two models share ``tokenizer``."""
    policy.eval()
    rows = [(p, r) for _, p, (r,) in sample_reply_ids(policy, tokenizer, prompts, 1, temperature,
                                                      max_new_tokens=max_new_tokens, seed=seed)]
    x, y = reply_rows(rows)
    per_token = kl_penalty(rows_token_logprobs(policy, x, y), rows_token_logprobs(reference, x, y), "k1")
    per_prompt = per_token.sum(axis=-1)                        # 0 at positions neither model scored
    return {"kl": float(per_prompt.mean()), "kl_sem": float(per_prompt.std() / np.sqrt(len(per_prompt))),
            "tokens": float(np.mean([len(r) for _, r in rows]))}


HEADERS = {"all": "all", "reward": "RM score", "win_rate": "win vs SFT", "kl": "KL to SFT"}


def markdown_table(rows: dict) -> str:
    """One Markdown table of ``rows`` ({stage: scores}): exact match per family and overall, the
    mean reward-model score, the win rate against the SFT model and the KL to it."""
    head = ["stage", *(HEADERS.get(c, c) for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"]
    for stage, r in rows.items():
        cells = [f"{r[f]:.0%}" if f in r else "-" for f in FAMILIES]
        cells += [f"{r['all']:.1%}", f"{r['reward']:+.3f}", f"{r['win_rate']:.1%}", f"{r['kl']:.2f}"]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
