"""What the training loop asks of a model, for the modules a phase trains around a fine-tuned one.

A reward model (a scalar head on the model) and DPO (the policy against a frozen reference) are
trained by the one Trainer through ``forward(x, y) -> (output, loss)``. They hold the fine-tuned
model as the attribute ``model`` (cli.finetune.run_phase's wrap_model rule: the checkpoint's
"model.*" entries are that model's), and answer the Trainer's other questions from it."""
from __future__ import annotations

from ..nn import Module


class PhaseModel(Module):
    """A module around ``model`` (a GPT or PeftModel) that the Trainer trains like a GPT."""

    def __init__(self, model: Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    @property
    def num_virtual_tokens(self) -> int:
        return self.model.num_virtual_tokens

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95), eps: float = 1e-8):
        """GPT's AdamW groups (matrices decayed, biases and norm scales not) over every trainable
        parameter of this module: the model's and any of the phase's own (a reward head)."""
        from ..models import GPT
        return GPT.configure_optimizers(self, weight_decay, learning_rate, betas, eps)
