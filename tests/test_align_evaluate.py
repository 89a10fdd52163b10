"""Scoring replies on the built-in task: the reply stops at the end-of-turn token, and accuracy is
exact match per family."""
import numpy as np

from tinygrad_lm.align.evaluate import reply, task_accuracy
from tinygrad_lm.align.tasks import task_split
from tinygrad_lm.tokenizers import ByteTokenizer

TOK = ByteTokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])


class Scripted:
    """A stand-in model whose generate() writes a fixed reply then <|im_end|> then junk."""

    def __init__(self, text):
        self.text = text

    def eval(self):
        return self

    def generate(self, ids, n, temperature=0.0, seed=None, stop=None):
        from tinygrad_lm.tensor import Tensor
        new = list(TOK.encode(self.text)) + [TOK.token_id("<|im_end|>")] + list(TOK.encode("junk"))
        return Tensor(np.concatenate([ids[0], np.array(new[:n])])[None])


def test_the_reply_ends_at_the_end_of_turn_token():
    assert reply(Scripted("enots"), TOK, "Reverse the word: stone") == "enots"


def test_accuracy_is_exact_match_per_family():
    examples = task_split("test", 10)
    scores = task_accuracy(Scripted("4"), TOK, examples)
    want_count = np.mean([e["completion"] == "4" for e in examples if e["family"] == "count"])
    assert scores["count"] == want_count and scores["reverse"] == 0 and scores["n"] == 10
    assert 0 <= scores["all"] <= 1
