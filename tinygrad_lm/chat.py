"""A conversation with a chat model: the model's template renders the turns, the KV cache is kept
across turns, and each answer streams until the template's end-of-turn token.

Every turn renders the whole conversation again (as transformers' apply_chat_template does) and
tokenizes it; only the tokens after the longest prefix already in the cache are run through the
model. Usually that is just the new user message, so a long conversation costs no re-reading; when
the template renders an earlier turn differently (or a reply re-tokenizes into other ids), the
cache is cut back to where the ids first differ and stays exact."""
from __future__ import annotations

import codecs
from collections.abc import Iterator

import numpy as np

from .sampling import check_sampling_args, sample
from .tensor import get_rng, no_grad
from .tokenizers.chat import ChatTemplate, end_of_turn_ids


class ChatSession:
    """``send(text)`` yields the reply's text as it is generated; ``messages`` is the conversation."""

    def __init__(self, model, tokenizer, system: str | None = None, *, max_new_tokens: int = 512,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None):
        check_sampling_args(temperature, top_k, top_p)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.template = ChatTemplate(getattr(tokenizer, "chat_template", None), getattr(tokenizer, "bos_token", None),
                                     getattr(tokenizer, "eos_token", None))
        self.stop_ids = end_of_turn_ids(self.template, tokenizer)
        if not self.stop_ids:
            raise ValueError("this tokenizer has no end-of-turn or end-of-text special token: a chat reply "
                             "would never end (use `generate` instead)")
        self.system = system
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = max_new_tokens, temperature, top_k, top_p
        self.rng = np.random.default_rng(seed) if seed is not None else get_rng()
        self.cache = model.new_cache(1)
        self.reset()

    def reset(self) -> None:
        """Start the conversation over (the system message stays)."""
        self.messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        self.cache.reset()
        self.cached: list[int] = []  # the token ids whose keys and values the cache holds

    def prompt_ids(self) -> list[int]:
        text = self.template.render(self.messages, add_generation_prompt=True)
        return list(self.tokenizer.encode(text, allowed_special="all"))

    @no_grad()
    def send(self, text: str) -> Iterator[str]:
        """Add a user message and yield the assistant's reply in pieces (whole UTF-8 characters)."""
        self.messages.append({"role": "user", "content": text})
        ids = self.prompt_ids()
        virtual = self.model.num_virtual_tokens            # a soft prompt's positions come first
        limit = self.model.config.block_size - virtual
        if len(ids) + 1 > limit:
            self.messages.pop()
            raise ValueError(f"the conversation is {len(ids):,} tokens, beyond the model's context of {limit:,}: "
                             "start a new one")
        same = 0
        for a, b in zip(self.cached, ids):  # the longest prefix the cache already holds
            if a != b:
                break
            same += 1
        same = min(same, len(ids) - 1)      # at least one token goes in: its logits choose the first reply token
        self.cache.pos, self.cached = (virtual + same if same else 0), ids[:same]
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        reply: list[int] = []
        feed = ids[same:]
        for _ in range(min(self.max_new_tokens, limit - len(ids))):
            logits, _ = self.model(np.array([feed]), cache=self.cache)
            self.cached += feed
            nxt = int(sample(np.asarray(logits.data[:, -1, :], dtype=np.float64), self.temperature, self.top_k,
                             self.top_p, self.rng)[0])
            if nxt in self.stop_ids:
                break
            reply.append(nxt)
            piece = decoder.decode(self.tokenizer.decode_bytes([nxt]))
            if piece:
                yield piece
            feed = [nxt]
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail
        self.messages.append({"role": "assistant", "content": self.tokenizer.decode(reply)})

    def reply(self, text: str) -> str:
        """``send`` for scripts: the whole reply at once."""
        return "".join(self.send(text))
