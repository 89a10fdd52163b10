"""Parameter-efficient fine-tuning, named as Hugging Face PEFT names it.

- LoRA: ``get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=("c_attn",)))``
- bottleneck adapters (Houlsby 2019): ``BottleneckConfig(reduction_factor=16)``
- soft prompts (prompt tuning): ``PromptTuningConfig(num_virtual_tokens=20)``
- a quantized frozen base (int8 or NF4), alone or under LoRA (QLoRA): ``quantize_model(model, "nf4")``

``model.save_pretrained(dir)`` writes PEFT's adapter_config.json + adapter_model.safetensors, and
``PeftModel.from_pretrained(base, dir)`` reads ours or PEFT's."""
from .config import BottleneckConfig, LoraConfig, PromptTuningConfig, config_from_peft
from .layers import BottleneckAdapter, LoraLinear, SoftPrompt, WithAdapter
from .model import PeftModel, get_peft_model, lora_targets
from .quant import QUANT_KINDS, QuantizedLinear, dequantize, quantize, quantize_model

__all__ = ["LoraConfig", "BottleneckConfig", "PromptTuningConfig", "config_from_peft", "get_peft_model",
           "PeftModel", "lora_targets", "LoraLinear", "BottleneckAdapter", "WithAdapter", "SoftPrompt",
           "QUANT_KINDS", "QuantizedLinear", "quantize", "dequantize", "quantize_model"]
