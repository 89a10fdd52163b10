"""The reward model of RLHF (Ouyang et al. 2022; Stiennon et al. 2020): the transformer plus a
scalar head on the last token, trained on preference pairs with the Bradley-Terry loss
-log sigmoid(r_chosen - r_rejected); and the built-in stand-in for human raters, ``judge_pairs``.

``RewardModel(model)`` holds the fine-tuned transformer (a GPT, or a PeftModel over one) as
``model`` and the head as ``score``, so its state dict reads ``model.transformer...`` (or
``model.base_model.model.transformer...`` under LoRA and the other methods) + ``score.weight`` and
``score.bias``, the names of Hugging Face's *ForSequenceClassification. Its ``forward(x, y)`` takes
align.preferences' batches (2B rows: the chosen sequences, then the rejected ones; y marks the
reply) and returns (rewards (2B,), loss), the shape the one Trainer trains.

A sequence's reward is read at its last token: after the reply's end-of-turn tokens (ChatML's
"<|im_end|>\\n"), the first position that has seen the whole conversation. Positions after it
(padding) cannot change it, the attention being causal, so they are not even computed.

A reward run saves what any fine-tuning run saves (checkpoint + meta["finetune"]: base, method,
phase "reward"); ``cli.reward.load_reward_model(path, device)`` rebuilds the model from it."""
from __future__ import annotations

from collections import Counter

import numpy as np

from .. import backend
from ..checkpoint import CheckpointError, save_checkpoint
from ..nn import Module
from ..nn.layers import skip_init
from ..tensor import Tensor, host_array, no_grad
from ..tokenizers.chat import end_of_turn_ids
from .heads import ScalarHead, pick_last
from .jsonl import write_jsonl
from .losses import bradley_terry_loss, pair_accuracy
from .phase import PhaseModel
from .preferences import _messages, last_token_index
from .sft import chat_template_of, check_chat_tokens, encode_conversation
from .tasks import answer, edit_distance, is_correct, judge

__all__ = ["RewardModel", "render_reply", "evaluate_reward_model", "sample_reply_ids", "reply_text", "sample_replies",
           "judge_pairs"]


def render_reply(tokenizer, prompt, reply) -> np.ndarray:
    """(N,) token ids of ``prompt`` (a string or TRL's message list) answered by ``reply`` through
    the chat template: the sequence a reward model scores, exactly as it saw pairs in training."""
    return encode_conversation(_messages(prompt, reply), tokenizer, chat_template_of(tokenizer))[0]


class RewardModel(PhaseModel):
    """A transformer whose last-token hidden state goes through a scalar head: one reward per sequence."""

    def __init__(self, model: Module, head: ScalarHead | None = None):
        super().__init__(model)
        ref = model.transformer.wte.weight          # the body's device and float dtype (a quantized body too)
        self.score = (head if head is not None else ScalarHead(model.config.n_embd)).to(ref.device, ref.dtype)
        self.train(model.training)

    # ---- rewards ------------------------------------------------------------------------------
    def rewards(self, x, last) -> Tensor:
        """x (N, T) token ids, last (N,) the position of each row's last token -> rewards (N,)."""
        last = host_array(last).astype(np.int64)
        ids = x.data if isinstance(x, Tensor) else x
        ids = ids[:, :int(last.max()) + 1]           # causal: what follows the last token cannot change it
        h = self.model.hidden_states(ids)            # (N, T', C)
        return self.score(pick_last(h, last))        # (N,)

    def forward(self, x, y):
        """A preference batch -> (rewards (2B,), Bradley-Terry loss): rows 0..B-1 chosen, B..2B-1
        rejected (align.preferences' layout); y (2B, T) marks the replies, so the last token of a
        row is the one after its last kept target."""
        last = last_token_index(host_array(y))
        if len(last) % 2:
            raise ValueError(f"a preference batch has an even number of rows (chosen, then rejected), got {len(last)}")
        r = self.rewards(x, last)
        B = len(last) // 2
        return r, bradley_terry_loss(r[:B], r[B:])

    @no_grad()
    def score_ids(self, ids_list, batch_size: int = 16) -> np.ndarray:
        """Rewards of single sequences (each a 1-D list or array of ids, e.g. ``render_reply``'s),
        scored in batches of similar length, in eval mode -> (N,) NumPy array, in the given order."""
        seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in ids_list]
        if any(len(s) == 0 for s in seqs):
            raise ValueError("score_ids: an empty sequence has no last token to score")
        out = np.zeros(len(seqs), dtype=np.float64)
        order = np.argsort([len(s) for s in seqs], kind="stable")   # similar lengths share a batch: little padding
        device, was_training = self.score.weight.device, self.training
        self.eval()
        try:
            for i in range(0, len(seqs), batch_size):
                picks = order[i:i + batch_size]
                lengths = np.array([len(seqs[j]) for j in picks])
                x = np.zeros((len(picks), lengths.max()), dtype=np.int64)
                for b, j in enumerate(picks):
                    x[b, :lengths[b]] = seqs[j]
                out[picks] = host_array(self.rewards(backend.to_device(x, device), lengths - 1))
        finally:
            self.train(was_training)
        return out.astype(self.score.weight.dtype)

    def score_replies(self, tokenizer, prompts, replies, batch_size: int = 16) -> np.ndarray:
        """Rewards of ``replies`` to ``prompts`` (same length), rendered through the chat template."""
        if len(prompts) != len(replies):
            raise ValueError(f"score_replies: {len(prompts)} prompts but {len(replies)} replies")
        return self.score_ids([render_reply(tokenizer, p, r) for p, r in zip(prompts, replies)], batch_size)

    # ---- files ----------------------------------------------------------------------------------
    def save(self, folder, tokenizer, finetune: dict):
        """The checkpoint a `tinygrad-lm reward` run leaves, without training state: what training
        changed (every parameter, or only the trainable ones over a frozen base) and the meta that
        rebuilds the rest. ``finetune``: how the body was made from its base,
        ``peft.finetune.run_meta(method, config, base, quantize)`` (base: {"ckpt": path} or
        {"model": name}). cli.reward.load_reward_model loads it back."""
        frozen = any(not p.requires_grad for p in self.parameters())
        state = ({n: backend.to_numpy(p.data).copy() for n, p in self.named_parameters() if p.requires_grad}
                 if frozen else self.state_dict())
        meta = {"finetune": {**finetune, "phase": "reward", "wrapped": True}, "model_config": self.config.to_dict(),
                "tokenizer": tokenizer.to_dict(), "step": 0, "trainable_only": frozen}
        return save_checkpoint(folder, state, meta)

    @classmethod
    def from_checkpoint(cls, model: Module, checkpoint: dict) -> "RewardModel":
        """The reward model of a run: ``model`` its body, already rebuilt and loaded from the run
        (cli.common.load_model does that), ``checkpoint`` the run's (load_checkpoint's dict), whose
        "score.*" entries are the head."""
        ft = checkpoint["meta"].get("finetune") or {}
        if ft.get("phase") != "reward":
            raise CheckpointError(f"{checkpoint['path']} is not a reward model (a `{ft.get('phase', 'train')}` run); "
                                  "train one with `tinygrad-lm reward`")
        with skip_init():                        # the head's weights are about to be loaded
            rm = cls(model)
        head = {k[len("score."):]: v for k, v in checkpoint["model"].items() if k.startswith("score.")}
        try:
            rm.score.load_state_dict(head)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"incompatible reward head in {checkpoint['path']}: {e}") from None
        return rm.eval()


@no_grad()
def evaluate_reward_model(reward_model: RewardModel, data, split: str = "val", batch_size: int = 16) -> dict:
    """Every pair of ``data``'s split (a PreferenceData), not a sample: {"pairs", "accuracy" (chosen
    strictly above rejected), "loss" (mean Bradley-Terry), "reward_chosen", "reward_rejected",
    "reward_mean", "reward_std" (over both replies: what PPO would normalise by)}."""
    block = reward_model.config.block_size - reward_model.num_virtual_tokens
    data.check_block_size(block)
    device, was_training = reward_model.score.weight.device, reward_model.training
    reward_model.eval()
    chosen, rejected = [], []
    try:
        n = data.num_pairs(split)
        for i in range(0, n, batch_size):
            x, y = data.batch(split, np.arange(i, min(i + batch_size, n)), block)
            r = host_array(reward_model(backend.to_device(x, device), y)[0]).astype(np.float64)
            chosen.append(r[:len(r) // 2])
            rejected.append(r[len(r) // 2:])
    finally:
        reward_model.train(was_training)
    c, r = np.concatenate(chosen), np.concatenate(rejected)
    both = np.concatenate([c, r])
    return {"pairs": int(len(c)), "accuracy": pair_accuracy(c, r), "loss": float(np.logaddexp(0, r - c).mean()),
            "reward_chosen": float(c.mean()), "reward_rejected": float(r.mean()),
            "reward_mean": float(both.mean()), "reward_std": float(both.std())}


# ---- the built-in raters: sample twice, let the scripted judge rank ------------------------------

def prompt_ids(tokenizer, template, prompt) -> list[int]:
    """The ids a reply is sampled after: ``prompt`` (a user message, or TRL's message list) through
    the chat template, with the assistant header."""
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    return list(tokenizer.encode(template.render(messages, add_generation_prompt=True), allowed_special="all"))


@no_grad()
def sample_reply_ids(model, tokenizer, prompts, n: int = 2, temperature: float = 1.0, top_k: int | None = None,
                     max_new_tokens: int = 48, seed: int = 0, chunk: int = 32):
    """Yield (prompt index, prompt ids (L,), [n reply id arrays]) for every prompt, in order: the
    prompt rendered through the chat template with the assistant header, and replies sampled with
    the KV-cached sampler, each cut after its first end-of-turn token (kept: the model chose to
    stop there; a reply without one ran out of max_new_tokens). Prompts go through in chunks of
    ``chunk``; within a chunk, prompts of the same token length share one batch of n rows each
    (our GPT has no padding mask, so one batch is one length)."""
    template = chat_template_of(tokenizer)
    check_chat_tokens(tokenizer, template)
    stop_ids = end_of_turn_ids(template, tokenizer)
    room = model.config.block_size - model.num_virtual_tokens
    rng = np.random.default_rng(seed)
    for start in range(0, len(prompts), chunk):
        groups: dict[int, list] = {}
        for i in range(start, min(start + chunk, len(prompts))):
            ids = prompt_ids(tokenizer, template, prompts[i])
            if len(ids) >= room:
                raise ValueError(f"prompt {i} is {len(ids)} tokens; the model's context is {room}")
            groups.setdefault(len(ids), []).append((i, ids))
        done = {}
        for length, items in groups.items():
            x = np.array([ids for _, ids in items for _ in range(n)], dtype=np.int64)   # (k n, L)
            out = host_array(model.generate(x, min(max_new_tokens, room - length), temperature=temperature,
                                            top_k=top_k, seed=int(rng.integers(2 ** 63)), stop=stop_ids))
            for k, (i, ids) in enumerate(items):
                replies = []
                for row in out[k * n:(k + 1) * n, length:]:
                    ends = np.flatnonzero(np.isin(row, stop_ids))
                    replies.append(row[:ends[0] + 1 if ends.size else len(row)].copy())
                done[i] = (np.asarray(ids, dtype=np.int64), replies)
        for i in sorted(done):
            yield i, *done[i]


def reply_text(tokenizer, reply_ids, stop_ids) -> str:
    """A sampled reply's text, without its end-of-turn token."""
    ids = list(reply_ids)
    if ids and ids[-1] in stop_ids:
        ids = ids[:-1]
    return tokenizer.decode(ids)


def sample_replies(model, tokenizer, prompts, n: int = 2, temperature: float = 1.0, top_k: int | None = None,
                   max_new_tokens: int = 48, seed: int = 0, chunk: int = 32):
    """Yield (prompt index, [n reply texts]) for every prompt: ``sample_reply_ids`` decoded, each
    reply cut at the chat template's end-of-turn token (ChatSession's stop tokens)."""
    stop_ids = end_of_turn_ids(chat_template_of(tokenizer), tokenizer)
    for i, _, replies in sample_reply_ids(model, tokenizer, prompts, n, temperature, top_k, max_new_tokens, seed,
                                          chunk):
        yield i, [reply_text(tokenizer, r, stop_ids) for r in replies]


def judge_pairs(model, tokenizer, prompts, n_pairs: int | None = None, temperature: float = 1.0, seed: int = 0,
                log=print, *, reference: bool = True, max_new_tokens: int = 48, top_k: int | None = None,
                path=None, name: str = "pairs"):
    """Preference pairs from the model's own replies, ranked by the scripted judge (tasks.judge:
    correct first, then closer to the answer, then shorter) standing in for human raters.

    Each prompt (of the built-in task) is answered twice (``sample_replies``); the judge orders the
    two; a tie (the same reply twice, say) is skipped. Prompts are taken in order until ``n_pairs``
    pairs are made (None: all prompts). With ``reference`` (the default), a prompt whose two
    replies teach nothing (a tie, or both wrong and equally far from the answer, where only length
    decides) gives a *reference pair* instead, when one reply is wrong: the true answer
    (tasks.answer) against that wrong reply, in the order the judge gives (the answer, being
    correct, wins). A weak model then still yields pairs that point toward correct answers, and a
    strong one (two correct replies: no pair) is not asked for what it cannot give.

    Returns (records, stats). Records: {"prompt", "chosen", "rejected", "source" ("sampled" or
    "reference"), "correct": [chosen, rejected]}; written to ``path`` (JSONL) when given. Stats
    counts prompts, pairs, ties skipped, prompts with a correct reply, uninformative pairs and
    reference pairs, and goes to ``log`` as one line."""
    targets = [answer(p) for p in prompts]   # a prompt outside the task fails now, not after sampling
    records, stats = [], Counter(prompts=0, sampled=0, ties=0, with_correct=0, both_correct=0,
                                 uninformative=0, reference=0)
    for i, (a, b) in sample_replies(model, tokenizer, prompts, 2, temperature, top_k, max_new_tokens, seed):
        if n_pairs is not None and len(records) >= n_pairs:
            break                                 # (the rest of the last chunk was sampled for nothing)
        p = prompts[i]
        stats["prompts"] += 1
        ok_a, ok_b = is_correct(p, a), is_correct(p, b)
        stats["with_correct"] += ok_a or ok_b
        stats["both_correct"] += ok_a and ok_b
        verdict, target = judge(p, a, b), targets[i]
        equally_far = not (ok_a or ok_b) and edit_distance(a.strip(), target) == edit_distance(b.strip(), target)
        if verdict == 0.5:
            stats["ties"] += 1
        elif equally_far:
            stats["uninformative"] += 1
        pair = None if verdict == 0.5 else (a, b) if verdict == 0 else (b, a)
        if pair is not None and not (reference and equally_far):
            records.append({"prompt": p, "chosen": pair[0], "rejected": pair[1], "source": "sampled",
                            "correct": [is_correct(p, pair[0]), is_correct(p, pair[1])]})
            stats["sampled"] += 1
        elif reference and not (ok_a and ok_b):
            wrong = pair[1] if pair is not None else (b if ok_a else a)
            first = judge(p, target, wrong)
            c, r = (target, wrong) if first == 0 else (wrong, target)
            records.append({"prompt": p, "chosen": c, "rejected": r, "source": "reference",
                            "correct": [is_correct(p, c), is_correct(p, r)]})
            stats["reference"] += 1
    stats = dict(stats, pairs=len(records))
    where = ""
    if path is not None:
        write_jsonl(path, records)
        where = f" -> {path}"
    log(f"judge ({name}): {stats['prompts']} prompts answered twice (temperature {temperature:g}): "
        f"{stats['with_correct']} with a correct reply ({stats['both_correct']} both); ties skipped: {stats['ties']}; "
        f"both wrong and equally far: {stats['uninformative']} -> {stats['sampled']} sampled + {stats['reference']} "
        f"reference pairs (the true answer over a wrong reply) = {stats['pairs']} pairs{where}")
    if n_pairs is not None and len(records) < n_pairs:
        log(f"judge ({name}): only {len(records)} of the {n_pairs} pairs asked for: the {len(prompts)} prompts "
            "ran out (too many ties)")
    return records, stats
