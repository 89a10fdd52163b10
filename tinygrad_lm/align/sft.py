"""Supervised fine-tuning data: conversations through the model's chat template, with the loss on
the assistant's tokens only.

Each conversation is rendered as the chat model will later see it (ChatSession renders the same
way), tokenized, and every position whose next token is not part of an assistant reply gets the
target -1 (ignored by the cross-entropy), so the model learns to answer, not to predict prompts.
``SFTData`` hands the training loop batches with the same ``get_batch`` as a text corpus, so SFT
runs through the one Trainer."""
from __future__ import annotations

import numpy as np

from ..tokenizers.chat import ChatTemplate, end_of_turn_ids

IGNORE = -1


def chat_template_of(tokenizer) -> ChatTemplate:
    """The tokenizer's chat template (ChatML when it has none), as ChatSession uses it."""
    return ChatTemplate(getattr(tokenizer, "chat_template", None), getattr(tokenizer, "bos_token", None),
                        getattr(tokenizer, "eos_token", None))


def check_chat_tokens(tokenizer, template: ChatTemplate) -> None:
    """The tokenizer must have a special token that ends an assistant turn, or a tuned model could
    never stop answering (ChatML: <|im_start|> and <|im_end|>)."""
    if not end_of_turn_ids(template, tokenizer):
        raise ValueError(f"this {type(tokenizer).__name__} has no special token that ends an assistant turn in "
                         "its chat template (ChatML needs <|im_start|> and <|im_end|>): a fine-tuned model could "
                         "never stop answering; pre-train with a tokenizer that has them")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, allowed_special="all"))


def encode_conversation(messages: list[dict], tokenizer, template: ChatTemplate) -> tuple[np.ndarray, np.ndarray]:
    """(ids, trained) of a conversation: token ids (N,) and a bool mask (N,) marking the tokens of
    assistant replies (with the template's end-of-turn tokens after each, which the model must
    learn to emit). Each reply's span is where the ids of the conversation up to and including it
    extend the ids of the conversation before it with the assistant header."""
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("an SFT example needs at least one assistant message to learn from")
    full = _encode(tokenizer, template.render(messages, add_generation_prompt=False))
    trained = np.zeros(len(full), dtype=bool)
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _encode(tokenizer, template.render(messages[:i], add_generation_prompt=True))
        upto = _encode(tokenizer, template.render(messages[:i + 1], add_generation_prompt=False))
        if full[:len(upto)] != upto or upto[:len(before)] != before:
            raise ValueError("the chat template does not render a conversation as the concatenation of its turns "
                             "(an earlier turn's tokens change when a later one is added): cannot tell which "
                             "tokens are the assistant's")
        trained[len(before):len(upto)] = True
    return np.asarray(full, dtype=np.int64), trained


class SFTData:
    """Tokenized conversations split into train and val, with a corpus's ``get_batch`` interface.

    A batch holds ``batch_size`` conversations drawn at random, each cut to ``seq_len + 1`` tokens
    (``truncated`` counts those longer) and padded on the right; x are the inputs, y the next
    tokens where they belong to a reply, -1 elsewhere (prompt, padding)."""

    def __init__(self, train: list[dict], val: list[dict], tokenizer, source: str = "conversations"):
        if not train or not val:
            raise ValueError(f"SFT needs training and validation conversations, got {len(train)} and {len(val)}")
        template = chat_template_of(tokenizer)
        check_chat_tokens(tokenizer, template)
        self.tokenizer, self.source = tokenizer, source
        self._splits = {name: [encode_conversation(c["messages"], tokenizer, template) for c in rows]
                        for name, rows in (("train", train), ("val", val))}
        self.pad_id = 0
        self.train, self.val = self._flat("train"), self._flat("val")   # all tokens, for the Trainer's summary

    def _flat(self, split):
        return np.concatenate([ids for ids, _ in self._splits[split]])

    @property
    def num_tokens(self) -> int:
        return len(self.train) + len(self.val)

    def longest(self, split: str = "train") -> int:
        return max(len(ids) for ids, _ in self._splits[split])

    def check_block_size(self, block_size: int) -> None:
        """Every conversation fits in block_size + 1 tokens, or the run would train on cut replies."""
        for split in ("train", "val"):
            n = self.longest(split)
            if n > block_size + 1:
                raise ValueError(f"the longest {split} conversation of {self.source} is {n} tokens; seq_len "
                                 f"{block_size} holds {block_size + 1}: raise --seq_len or shorten the data")

    def get_batch(self, split: str, batch_size: int, block_size: int, rng: np.random.Generator):
        rows = self._splits["val" if split == "val" else "train"]
        picks = rng.integers(0, len(rows), size=batch_size)
        x = np.full((batch_size, block_size), self.pad_id, dtype=np.int64)
        y = np.full((batch_size, block_size), IGNORE, dtype=np.int64)
        for b, i in enumerate(picks):
            ids, trained = rows[i]
            n = min(len(ids), block_size + 1)
            x[b, :n - 1] = ids[:n - 1]
            y[b, :n - 1] = np.where(trained[1:n], ids[1:n], IGNORE)   # target t is token t+1: trained if it is
        return x, y


def examples_to_conversations(rows: list[dict]) -> list[dict]:
    """{"prompt", "completion"} task examples -> {"messages": [user, assistant]}."""
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in rows]
