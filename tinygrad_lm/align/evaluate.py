"""How well a chat model does the built-in task: greedy replies through its chat template, scored
by exact match per family (the report card's first column, and `tinygrad-lm eval --task builtin`)."""
from __future__ import annotations

import numpy as np

from ..tensor import no_grad
from ..tokenizers.chat import end_of_turn_ids
from .sft import chat_template_of
from .tasks import FAMILIES, family_of, is_correct

# room for the task's longest answer (4 words of 8 letters and 3 spaces: 35 characters, a token each
# for a byte-level model) and the end-of-turn token after it
MAX_NEW_TOKENS = 48


@no_grad()
def reply(model, tokenizer, prompt: str, max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = 0.0, seed=None,
          template=None) -> str:
    """The model's reply to one user message (greedy by default), without the end-of-turn token."""
    template = template or chat_template_of(tokenizer)
    text = template.render([{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = np.array([tokenizer.encode(text, allowed_special="all")])
    stops = end_of_turn_ids(template, tokenizer)
    out = model.generate(ids, max_new_tokens, temperature=temperature, seed=seed, stop=stops or None).data
    new = [int(t) for t in out[0, ids.shape[1]:]]
    for i, t in enumerate(new):
        if t in stops:
            new = new[:i]
            break
    return tokenizer.decode(new)


def task_accuracy(model, tokenizer, examples: list[dict], max_new_tokens: int = MAX_NEW_TOKENS, log=None) -> dict:
    """{family: exact-match accuracy, "all": overall, "n": prompts} over task examples, greedy."""
    model.eval()
    template = chat_template_of(tokenizer)
    right = {f: [] for f in FAMILIES}
    for i, ex in enumerate(examples):
        ok = is_correct(ex["prompt"], reply(model, tokenizer, ex["prompt"], max_new_tokens, template=template))
        right[family_of(ex["prompt"])].append(ok)
        if log is not None and (i + 1) % 25 == 0:
            log(f"  {i + 1}/{len(examples)} prompts")
    scores = {f: float(np.mean(v)) for f, v in right.items() if v}
    scores["all"] = float(np.mean([x for v in right.values() for x in v]))
    scores["n"] = len(examples)
    return scores
