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

    A batch row holds one conversation drawn at random, cut to ``seq_len + 1`` tokens and padded
    on the right; get_batch returns (x, y): x the inputs, y the next tokens where they belong to a
    reply, -1 elsewhere (prompt, padding).

    With ``packing``, a row holds several whole conversations back to back (drawn at random; one
    that does not fit starts the next row; the rest padded), so short conversations waste little
    of the row, and get_batch returns (x, y, segment_ids): segment_ids (B, T) number a row's
    conversations 0, 1, ... (padding -1), for GPT.forward to keep each conversation from attending
    to another and to restart positions at each one."""

    def __init__(self, train: list[dict], val: list[dict], tokenizer, source: str = "conversations",
                 packing: bool = False):
        if not train or not val:
            raise ValueError(f"SFT needs training and validation conversations, got {len(train)} and {len(val)}")
        template = chat_template_of(tokenizer)
        check_chat_tokens(tokenizer, template)
        self.tokenizer, self.source, self.packing = tokenizer, source, packing
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
        convos = self._splits["val" if split == "val" else "train"]
        x = np.full((batch_size, block_size), self.pad_id, dtype=np.int64)
        y = np.full((batch_size, block_size), IGNORE, dtype=np.int64)
        if self.packing:
            return self._pack(convos, x, y, rng)
        for b, i in enumerate(rng.integers(0, len(convos), size=batch_size)):
            _put(x, y, b, 0, *convos[i])
        return x, y

    @staticmethod
    def _pack(convos, x, y, rng):
        """Fill x and y's rows greedily with conversations drawn at random -> (x, y, segment_ids)."""
        batch_size, block_size = x.shape
        seg = np.full(x.shape, -1, dtype=np.int64)                      # (B, T): -1 is padding
        b = at = k = 0   # row, its first free column, and the number of conversations in it
        while True:
            ids, trained = convos[rng.integers(0, len(convos))]
            if at + min(len(ids) - 1, block_size) > block_size:      # it does not fit: next row
                b, at, k = b + 1, 0, 0
                if b == batch_size:
                    return x, y, seg
            n = _put(x, y, b, at, ids, trained)
            seg[b, at:at + n] = k
            at, k = at + n, k + 1


def _put(x, y, b, at, ids, trained) -> int:
    """Write one conversation into row b of x and y from column ``at``, cut to what the row has
    left: inputs ids[:-1], targets the next token where it is trained, else IGNORE. Returns the
    number of columns used."""
    n = min(len(ids) - 1, x.shape[1] - at)
    x[b, at:at + n] = ids[:n]
    y[b, at:at + n] = np.where(trained[1:n + 1], ids[1:n + 1], IGNORE)   # target t is token t+1: trained if it is
    return n


def examples_to_conversations(rows: list[dict]) -> list[dict]:
    """{"prompt", "completion"} task examples -> {"messages": [user, assistant]}."""
    return [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}]}
            for r in rows]
