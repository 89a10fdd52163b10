"""A quantized frozen base: Linear layers whose weights stay int8 or NF4 (QLoRA's 4-bit NormalFloat).

    quantize_model(model, "nf4")                     # every Linear but lm_head, in place
    get_peft_model(model, LoraConfig(...))           # LoRA on top of the quantized base = QLoRA

A QuantizedLinear keeps its weight packed (int8: ~1/4 of float32; nf4, block 64: 4.5 bits, ~1/7) and
dequantizes it on the fly in each forward and backward (ops/quant.py; a fused Numba kernel on the
CPU). The weight is frozen and no Parameter (not in parameters() or state_dict()); gradients still
flow through the layer to its input, so adapters below it train. The formats (quantize,
dequantize, QuantizedWeight, NF4_LEVELS) live in ops/quant.py, one floor down, because the op's
reference needs them; they are re-exported here."""
from __future__ import annotations

import numpy as np

from ..nn import Linear, Module, Parameter
from ..ops.quant import NF4_LEVELS, QUANT_KINDS, QuantizedWeight, dequantize, quant_linear, quantize
from ..tensor import Tensor

__all__ = ["QUANT_KINDS", "NF4_LEVELS", "QuantizedWeight", "quantize", "dequantize", "quant_linear",
           "QuantizedLinear", "quantize_model", "quantized_bytes"]


class QuantizedLinear(Module):
    """y = x @ dequantize(qweight).T + bias with a frozen quantized weight (out_features, in_features).

    qweight: a QuantizedWeight (not a Parameter). bias: a Parameter with requires_grad False (a
    LoRA with bias="lora_only" may switch it on), or None. The forward computes in x's dtype, so a
    model moved to float64 keeps working; the packed weight follows x to its device."""

    def __init__(self, qweight: QuantizedWeight, bias=None):
        super().__init__()
        if not isinstance(qweight, QuantizedWeight):
            raise TypeError(f"QuantizedLinear: qweight must be a QuantizedWeight, got {type(qweight).__name__}")
        self.out_features, self.in_features = qweight.shape
        self.kind = qweight.kind
        self.qweight = qweight
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise ValueError(f"QuantizedLinear: bias has shape {tuple(bias.shape)}, expected ({self.out_features},)")
        self.bias = None if bias is None else Parameter(bias.data if isinstance(bias, Tensor) else bias,
                                                        requires_grad=False)

    @classmethod
    def from_linear(cls, linear: Linear, kind: str, block_size: int = 64) -> "QuantizedLinear":
        """The quantized twin of a Linear (its bias array is shared, not copied)."""
        if not isinstance(linear, Linear):
            raise TypeError(f"QuantizedLinear.from_linear: expected an nn.Linear, got {type(linear).__name__}")
        qweight = quantize(linear.weight.data, kind, block_size).to(linear.weight.device)
        return cls(qweight, linear.bias)

    def forward(self, x):
        if self.qweight.device != x.device:
            self.qweight = self.qweight.to(x.device)
        return quant_linear(x, self.qweight, self.bias)

    def dequantized_weight(self):
        """The weight as float32 (out_features, in_features), on the packed weight's device."""
        return dequantize(self.qweight, np.float32)

    def extra_repr(self):
        block = f", block_size={self.qweight.block_size}" if self.kind == "nf4" else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}{block}, "
                f"bias={self.bias is not None}")


def quantize_model(model: Module, kind: str, block_size: int = 64, skip=("lm_head",)) -> Module:
    """Replace, in place, every nn.Linear whose module path does not end with a name in ``skip``
    by a QuantizedLinear of ``kind`` ("int8" or "nf4"); embeddings and norms stay float. The
    layers an adapter trains (LoRA's lora_A/lora_B, a bottleneck adapter's down/up) stay float
    too; LoRA's base_layer is quantized. Returns the model.

    lm_head is skipped by default (QLoRA keeps the output layer in 16 bits; with tied weights it
    shares the embedding matrix, and quantizing it would add a second, packed copy of it)."""
    from .layers import BottleneckAdapter, LoraLinear   # the adapters' own layers are what trains

    if kind not in QUANT_KINDS:
        raise ValueError(f"unknown quantization kind {kind!r}: expected one of {QUANT_KINDS}")
    skip = (skip,) if isinstance(skip, str) else tuple(skip)
    targets = []
    for path, m in model.named_modules():
        if not isinstance(m, Linear) or not path or any(path == s or path.endswith("." + s) for s in skip):
            continue
        up, _, name = path.rpartition(".")
        parent = model.get_submodule(up)
        if isinstance(parent, BottleneckAdapter) or (isinstance(parent, LoraLinear) and name != "base_layer"):
            continue
        targets.append((parent, name, m))
    for parent, name, m in targets:      # collected first: never replace modules while walking them
        setattr(parent, name, QuantizedLinear.from_linear(m, kind, block_size))
    return model


def quantized_bytes(model: Module) -> int:
    """Bytes the model's weights take: float parameters (tied ones once) plus every QuantizedLinear's
    packed data and scales."""
    total = sum(int(p.data.nbytes) for p in model.parameters())
    seen = set()
    for m in model.modules():
        if isinstance(m, QuantizedLinear) and id(m.qweight) not in seen:
            seen.add(id(m.qweight))
            total += m.qweight.nbytes
    return total
