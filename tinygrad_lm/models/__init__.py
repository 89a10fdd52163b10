"""Models built from tinygrad_lm.nn."""
from .gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
