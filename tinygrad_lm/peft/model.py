"""get_peft_model and PeftModel: a GPT with LoRA, bottleneck adapters or a soft prompt, the rest frozen.

The wrapped model is a Module used exactly like its base: forward (with targets or all_logits),
generate, stream, new_cache, config, to, state_dict. Its parameters are named as in Hugging Face
PEFT (base_model.model.<path>, LoRA's base_layer / lora_A / lora_B), and only the added ones (and,
for LoRA with bias "all" or "lora_only", the biases) have requires_grad."""
from __future__ import annotations

import contextlib
import re

from ..nn import Linear, Module, ModuleDict
from .config import BottleneckConfig, LoraConfig, PromptTuningConfig
from .layers import BottleneckAdapter, LoraLinear, SoftPrompt, WithAdapter, prompt_init
from .quant import QuantizedLinear

BASE_LINEARS = (Linear, QuantizedLinear)
OUTPUT_LAYER = "lm_head"


def _matches(path: str, target) -> bool:
    """PEFT's rule: a str is a regular expression for the whole path ("all-linear" aside); a list
    of names matches a path equal to one of them or ending with "." + one."""
    if isinstance(target, str):
        return target == "all-linear" and path.split(".")[-1] != OUTPUT_LAYER or re.fullmatch(target, path) is not None
    return any(path == t or path.endswith("." + t) for t in target)


def _pattern_value(path: str, pattern: dict, default):
    """rank_pattern / alpha_pattern lookup as PEFT does: the first key matching the end of the path."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def lora_targets(model: Module, target) -> list[str]:
    """The dotted paths of the Linear layers (float or quantized) that ``target`` selects."""
    found = [path for path, m in model.named_modules() if isinstance(m, BASE_LINEARS) and _matches(path, target)]
    if not found:
        names = sorted({path.split(".")[-1] for path, m in model.named_modules() if isinstance(m, BASE_LINEARS)})
        raise ValueError(f"target_modules {target!r} matched no Linear layer; this model's are named {names} "
                         "(our attention stacks q, k, v in c_attn, and a SwiGLU MLP stacks gate and up in c_fc)")
    return found


class PeftModel(Module):
    """A base GPT with one parameter-efficient method added (see get_peft_model)."""

    def __init__(self, model: Module, config, tokenizer=None):
        super().__init__()
        if isinstance(model, PeftModel):
            raise ValueError("this model already has an adapter (a PeftModel); merge_and_unload() it first")
        if not hasattr(model, "transformer") or not hasattr(model, "config"):
            raise TypeError(f"get_peft_model needs a tinygrad_lm GPT, got {type(model).__name__}")
        self.base_model = ModuleDict({"model": model})
        self.peft_config = config
        self._requires_grad_before = [(p, p.requires_grad) for p in model.parameters()]
        model.requires_grad_(False)
        if isinstance(config, LoraConfig):
            self._add_lora(model, config)
        elif isinstance(config, BottleneckConfig):
            self._add_adapters(model, config)
        elif isinstance(config, PromptTuningConfig):
            if model.soft_prompt is not None:
                raise ValueError("this model already has a soft prompt")
            wte = model.transformer.wte.weight
            from .. import backend
            init = prompt_init(config, backend.to_numpy(wte.data), tokenizer)
            model.soft_prompt = SoftPrompt(backend.to_device(init, wte.device))
        else:
            raise TypeError(f"unknown PEFT config {type(config).__name__}: expected LoraConfig, BottleneckConfig "
                            "or PromptTuningConfig")
        self.train(model.training)

    @staticmethod
    def _add_lora(model, config: LoraConfig):
        tied, ref = model.config.tie_weights, model.transformer.wte.weight
        for path in lora_targets(model, config.target_modules):
            if tied and path == OUTPUT_LAYER:
                raise ValueError("lm_head shares its weight with the token embedding (tie_weights): a LoRA on "
                                 "it would change both; target the other layers")
            base = model.get_submodule(path)
            r = int(_pattern_value(path, config.rank_pattern, config.r))
            alpha = _pattern_value(path, config.alpha_pattern, config.lora_alpha)
            layer = LoraLinear(base, r, config.scale(r, alpha), config.lora_dropout)
            layer.lora_A.to(ref.device, ref.dtype)     # the base model's device and dtype (a quantized
            layer.lora_B.to(ref.device, ref.dtype)     # base has no float weight to ask)
            model.set_submodule(path, layer)
            if config.bias == "lora_only" and base.bias is not None:
                base.bias.requires_grad_(True)
        if config.bias == "all":
            for pname, p in model.named_parameters():
                if pname.endswith(".bias"):
                    p.requires_grad_(True)

    @staticmethod
    def _add_adapters(model, config: BottleneckConfig):
        C, ref = model.config.n_embd, model.transformer.wte.weight
        for block in model.transformer.h:
            for name in config.target:
                adapter = BottleneckAdapter(C, config.reduction_factor, config.non_linearity).to(ref.device, ref.dtype)
                setattr(block, name, WithAdapter(getattr(block, name), adapter))

    # ---- used like its base ------------------------------------------------------------------
    @property
    def model(self) -> Module:
        """The base model, with the adapter layers inside it."""
        return self.base_model.model

    def __getattr__(self, name):
        # only for names PeftModel itself lacks: generate, stream, config, new_cache, ... of the base
        base = self.__dict__.get("base_model")
        if base is None:
            raise AttributeError(name)
        return getattr(base.model, name)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable, all) parameter counts, as PEFT's method of that name."""
        return self.num_parameters(trainable=True), self.num_parameters()

    def print_trainable_parameters(self, print=print):
        t, n = self.get_nb_trainable_parameters()
        print(f"trainable params: {t:,} || all params: {n:,} || trainable%: {100 * t / n:.4f}")

    def trainable_state_dict(self) -> dict:
        """Only what training changes: {name: host array} of the parameters with requires_grad."""
        from .. import backend
        return {n: backend.to_numpy(p.data).copy() for n, p in self.named_parameters() if p.requires_grad}

    # ---- LoRA: merging --------------------------------------------------------------------------
    def lora_layers(self) -> list[tuple[str, LoraLinear]]:
        return [(path, m) for path, m in self.model.named_modules() if isinstance(m, LoraLinear)]

    def _lora_only(self, what: str):
        if not isinstance(self.peft_config, LoraConfig):
            raise ValueError(f"{what}: only LoRA adds into the base weights; a {self.peft_config.peft_type} "
                             "adapter stays a separate layer")

    def merge(self) -> None:
        """Add each LoRA's scale * B @ A into its base weight (forward then skips the LoRA branch)."""
        self._lora_only("merge")
        for _, layer in self.lora_layers():
            layer.merge()

    def unmerge(self) -> None:
        """Give every merged base weight back exactly as it was before merge()."""
        self._lora_only("unmerge")
        for _, layer in self.lora_layers():
            layer.unmerge()

    def merge_and_unload(self) -> Module:
        """The base model with every LoRA merged into a plain Linear (a quantized base is dequantized),
        and its parameters' requires_grad as they were before get_peft_model."""
        self._lora_only("merge_and_unload")
        model = self.model
        for path, layer in self.lora_layers():
            model.set_submodule(path, layer.merged_linear())
        for p, flag in self._requires_grad_before:
            p.requires_grad_(flag)
        return model

    @contextlib.contextmanager
    def disable_adapter(self):
        """Inside the block the model is its base: LoRA branches, adapters and the soft prompt are off
        (merged LoRA weights are taken out and put back afterwards)."""
        model = self.model
        switched = [m for m in model.modules() if isinstance(m, (LoraLinear, BottleneckAdapter))]
        merged = [m for m in switched if isinstance(m, LoraLinear) and m.merged]
        prompt = model.soft_prompt
        for m in merged:
            m.unmerge()
        for m in switched:
            m.disabled = True
        model.soft_prompt = None
        try:
            yield self
        finally:
            model.soft_prompt = prompt
            for m in switched:
                m.disabled = False
            for m in merged:
                m.merge()

    # ---- files ---------------------------------------------------------------------------------
    def save_pretrained(self, folder) -> None:
        """adapter_config.json + adapter_model.safetensors in PEFT's layout (see peft/files.py)."""
        from .files import save_adapter
        return save_adapter(self, folder)

    @classmethod
    def from_pretrained(cls, model: Module, folder, is_trainable: bool = False) -> "PeftModel":
        """The adapter in ``folder`` (ours or PEFT's) on ``model``; frozen unless is_trainable."""
        from .files import load_adapter
        return load_adapter(model, folder, is_trainable)


def get_peft_model(model: Module, config, tokenizer=None) -> PeftModel:
    """Freeze ``model`` and add the method ``config`` describes (LoraConfig, BottleneckConfig,
    PromptTuningConfig); the tokenizer is needed only for a soft prompt initialised from text."""
    return PeftModel(model, config, tokenizer)
