"""Fine-tuning runs: a base model (a training run's checkpoint or a pretrained model) plus one
method, rebuilt the same way when a run resumes or is loaded back for generation.

Methods: "full" (every parameter), "lora", "adapter" (bottleneck), "prompt" (soft prompt), and
"qlora" (LoRA over a base quantized to NF4, or int8 with quantize="int8"). The run's checkpoint
holds only what training changes; ``meta["finetune"]`` says how to rebuild the rest."""
from __future__ import annotations

from dataclasses import asdict

from .config import BottleneckConfig, LoraConfig, PromptTuningConfig
from .model import PeftModel, get_peft_model
from .quant import QUANT_KINDS, quantize_model

METHODS = ("full", "lora", "adapter", "prompt", "qlora")
# what a demanding user would start from on these models (measured in benchmarks/bench_finetune.py)
DEFAULT_LR = {"full": 1e-4, "lora": 1e-3, "adapter": 1e-3, "prompt": 3e-2, "qlora": 1e-3}


def method_config(method: str, options: dict, base_name: str | None = None):
    """The PEFT config of a method from CLI-style options (lora_r, lora_alpha, lora_dropout,
    target_modules, reduction_factor, num_virtual_tokens, prompt_init, prompt_init_text)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "full":
        return None
    if method in ("lora", "qlora"):
        targets = options.get("target_modules") or "all-linear"
        if targets != "all-linear":   # "c_attn,c_fc": module names
            targets = tuple(t.strip() for t in targets.split(",") if t.strip())
        return LoraConfig(r=options.get("lora_r") or 8, lora_alpha=options.get("lora_alpha") or 16,
                          lora_dropout=options.get("lora_dropout") or 0.0, target_modules=targets,
                          base_model_name_or_path=base_name)
    if method == "adapter":
        return BottleneckConfig(reduction_factor=options.get("reduction_factor") or 16, base_model_name_or_path=base_name)
    init = options.get("prompt_init") or ("TEXT" if options.get("prompt_init_text") else "SAMPLE_VOCAB")
    return PromptTuningConfig(num_virtual_tokens=options.get("num_virtual_tokens") or 20,
                              prompt_tuning_init=init.upper(), prompt_tuning_init_text=options.get("prompt_init_text"),
                              base_model_name_or_path=base_name)


def prepare(model, method: str, config, tokenizer=None, quantize: str | None = None):
    """The model to train: ``model`` itself (full), or a PeftModel over it (quantized first for qlora)."""
    if method == "qlora":
        quantize = quantize or "nf4"
    if quantize is not None:
        if quantize not in QUANT_KINDS:
            raise ValueError(f"quantize must be one of {QUANT_KINDS}, got {quantize!r}")
        if method not in ("lora", "qlora"):
            raise ValueError(f"a quantized base has no float weights to train: --quantize goes with lora/qlora, "
                             f"not {method}")
        quantize_model(model, quantize)
        from .. import backend
        backend.release_free_memory()   # the float weights' memory goes back: the point of quantizing
    if config is None:
        return model
    return get_peft_model(model, config, tokenizer)


def run_meta(method: str, config, base: dict, quantize: str | None) -> dict:
    """What meta["finetune"] records: enough to rebuild the model before loading the checkpoint."""
    return {"method": method, "base": base, "quantize": quantize,
            "peft_type": None if config is None else config.peft_type,
            "peft_config": None if config is None else {k: (list(v) if isinstance(v, tuple) else v)
                                                       for k, v in asdict(config).items()}}


def rebuild(meta: dict, load_base):
    """The model of a fine-tuning run's meta["finetune"]: ``load_base(base)`` gives (model, tokenizer)
    of the recorded base, then the same method is applied. Returns (model, tokenizer)."""
    from .config import CONFIGS
    model, tok = load_base(meta["base"])
    config = None
    if meta.get("peft_type"):
        cls = CONFIGS[meta["peft_type"]]
        args = dict(meta["peft_config"])
        if "target_modules" in args and isinstance(args["target_modules"], list):
            args["target_modules"] = tuple(args["target_modules"])
        config = cls(**args)
    return prepare(model, meta["method"], config, tok, meta.get("quantize")), tok


__all__ = ["METHODS", "DEFAULT_LR", "method_config", "prepare", "run_meta", "rebuild", "PeftModel"]
