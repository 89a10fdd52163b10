"""Preference pairs ({"prompt", "chosen", "rejected"}) as batches for the reward model and DPO.

Each pair is rendered twice through the chat template, prompt + chosen reply and prompt + rejected
reply (encode_conversation, as SFT does), so both phases see exactly what the chat model sees. A
batch of B pairs is 2B rows: the chosen sequences first, then the rejected ones in the same order.
x holds whole sequences (not shifted: a reward head reads the last token itself), padded on the
right; y[t] is token t + 1 where it belongs to the reply, -1 elsewhere, so the completion's summed
log-probability is the sum over y's kept targets, and the last token of a sequence is the one after
its last kept target."""
from __future__ import annotations

import numpy as np

from .sft import IGNORE, chat_template_of, check_chat_tokens, encode_conversation


def _messages(prompt, reply) -> list[dict]:
    """A conversation from a prompt and one reply, each a string or TRL's list of messages."""
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return msgs + ([{"role": "assistant", "content": reply}] if isinstance(reply, str) else list(reply))


def last_token_index(targets: np.ndarray) -> np.ndarray:
    """(N,) index of each row's last token: one after its last kept target (rows with none: an error)."""
    kept = targets != IGNORE
    if not kept.any(axis=1).all():
        raise ValueError("a preference sequence has no reply tokens (cut off by seq_len?)")
    return targets.shape[1] - np.argmax(kept[:, ::-1], axis=1)     # last kept t, plus one


class PreferenceData:
    """Tokenized preference pairs split into train and val, with a corpus's ``get_batch`` interface."""

    def __init__(self, train: list[dict], val: list[dict], tokenizer, source: str = "preference pairs"):
        if not train or not val:
            raise ValueError(f"preference training needs training and validation pairs, got {len(train)} and {len(val)}")
        template = chat_template_of(tokenizer)
        check_chat_tokens(tokenizer, template)
        self.tokenizer, self.source = tokenizer, source
        self._splits = {}
        for name, rows in (("train", train), ("val", val)):
            self._splits[name] = [tuple(encode_conversation(_messages(r["prompt"], r[side]), tokenizer, template)
                                        for side in ("chosen", "rejected")) for r in rows]
        self.pad_id = 0
        self.train, self.val = self._flat("train"), self._flat("val")

    def _flat(self, split):
        return np.concatenate([ids for pair in self._splits[split] for ids, _ in pair])

    @property
    def num_tokens(self) -> int:
        return len(self.train) + len(self.val)

    def num_pairs(self, split: str) -> int:
        return len(self._splits[split])

    def check_block_size(self, block_size: int) -> None:
        for split, pairs in self._splits.items():
            n = max(len(ids) for pair in pairs for ids, _ in pair)
            if n > block_size:
                raise ValueError(f"the longest {split} sequence of {self.source} is {n} tokens; seq_len is "
                                 f"{block_size}: raise --seq_len or shorten the data")

    def batch(self, split: str, picks, block_size: int):
        """x, y (2B, block_size) of the pairs ``picks``: chosen rows, then rejected rows."""
        pairs = self._splits["val" if split == "val" else "train"]
        B = len(picks)
        x = np.full((2 * B, block_size), self.pad_id, dtype=np.int64)
        y = np.full((2 * B, block_size), IGNORE, dtype=np.int64)
        for side in (0, 1):
            for b, i in enumerate(picks):
                ids, trained = pairs[i][side]
                n = min(len(ids), block_size)
                row = side * B + b
                x[row, :n] = ids[:n]
                y[row, :n - 1] = np.where(trained[1:n], ids[1:n], IGNORE)
        return x, y

    def get_batch(self, split: str, batch_size: int, block_size: int, rng: np.random.Generator):
        pairs = self._splits["val" if split == "val" else "train"]
        return self.batch(split, rng.integers(0, len(pairs), size=batch_size), block_size)
