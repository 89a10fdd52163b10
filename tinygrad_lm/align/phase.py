"""What the training loop asks of a model, for the modules a phase trains around a fine-tuned one.

A reward model (a scalar head on the model), DPO (the policy against a frozen reference) and PPO
(the policy with a value head, against a frozen reference) are trained by the one Trainer through
``forward(*batch) -> (output, loss)``. They hold the fine-tuned model as the attribute ``model``
(cli.finetune.run_phase's wrap_model rule: the checkpoint's "model.*" entries are that model's),
and answer the Trainer's other questions from it.

``PolicyPhase`` adds the frozen reference that DPO and PPO keep the policy close to: the policy as
it was when wrapped, and never changed:
- a plain GPT (--method full): a frozen deep copy, made before any step (a second copy of the
  weights, without gradients or optimizer state), held outside the module tree, so parameters(),
  state_dict() and the checkpoint hold the policy only;
- a PeftModel (lora, qlora, adapter, prompt): the same model with its adapter switched off
  (``PeftModel.disable_adapter()``), as TRL does when a PEFT model comes without ``ref_model``: the
  frozen base *is* the reference, so there is no second copy.
The reference runs under no_grad and in eval mode (no dropout), so it is deterministic."""
from __future__ import annotations

import copy

from ..nn import Module
from ..tensor import no_grad

REFERENCES = ("copy", "adapter")


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

    @property
    def device(self) -> str:
        return self.model.parameters()[0].device

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95), eps: float = 1e-8):
        """GPT's AdamW groups (matrices decayed, biases and norm scales not) over every trainable
        parameter of this module: the model's and any of the phase's own (a reward or value head)."""
        from ..models import GPT
        return GPT.configure_optimizers(self, weight_decay, learning_rate, betas, eps)


class PolicyPhase(PhaseModel):
    """A policy (``model``) trained against a frozen reference of itself (see the module docstring)."""

    def __init__(self, policy: Module, reference: str | None = None, phase: str = "policy"):
        """reference: "copy", "adapter", or None: "adapter" for a PeftModel, else "copy". (A PeftModel
        whose adapter was already trained, e.g. a LoRA SFT run trained on with --method full, needs
        "copy": its disabled adapter is the model before SFT.)"""
        from ..peft import PeftModel
        if reference is None:
            reference = "adapter" if isinstance(policy, PeftModel) else "copy"
        if reference not in REFERENCES:
            raise ValueError(f"{phase}: reference must be one of {REFERENCES}, got {reference!r}")
        if reference == "adapter" and not isinstance(policy, PeftModel):
            raise ValueError(f"{phase}: reference 'adapter' needs a PeftModel policy, got a {type(policy).__name__}")
        PhaseModel.__init__(self, policy)
        # a tuple keeps the copy out of named_children(): not a parameter, not in the state dict
        self._reference = () if reference == "adapter" else (copy.deepcopy(policy).requires_grad_(False).eval(),)

    @property
    def reference(self) -> Module | None:
        """The frozen copy, or None when the reference is the PeftModel with its adapter disabled."""
        return self._reference[0] if self._reference else None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.__dict__.get("_reference"):
            self.reference.eval()      # the reference never drops out
        return self

    def to(self, device=None, dtype=None):
        super().to(device, dtype)
        if self.reference is not None:
            self.reference.to(device, dtype)
        return self

    @no_grad()
    def reference_logits(self, x):
        """The reference's logits (B, T, V) of token ids x (B, T), without gradient, in eval mode."""
        if self.reference is not None:
            return self.reference(x, all_logits=True)[0]
        was = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                return self.model(x, all_logits=True)[0]
        finally:
            self.model.train(was)
