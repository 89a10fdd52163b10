"""The layers parameter-efficient fine-tuning adds: LoRA around a Linear, a bottleneck adapter after
a sub-layer, and the soft prompt's virtual token embeddings."""
from __future__ import annotations

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import Dropout, Linear, Module, Parameter
from ..nn.layers import skip_init
from ..tensor import Tensor, get_rng


class LoraLinear(Module):
    """base(x) + lora_B(lora_A(dropout(x))) * scale (Hu et al. 2021), names as in PEFT.

    lora_A (r, in) starts as a Linear's default (Kaiming-uniform) init and lora_B (out, r) at zero,
    so the wrapped layer starts exactly as its base. ``base_layer`` is frozen by get_peft_model.
    merge() adds scale * B @ A into the base weight (keeping the original array, so unmerge()
    gives it back bit for bit); a quantized base cannot be merged into, only merge_and_unload'ed."""

    def __init__(self, base_layer, r: int, scale: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.lora_A = Linear(self.in_features, r, bias=False)
        self.lora_B = Linear(r, self.out_features, bias=False)
        self.lora_B.weight.data[...] = 0
        self.lora_dropout = Dropout(dropout)
        self.r, self.scale = r, float(scale)
        self.disabled = False
        self._unmerged_weight = None                       # the base weight before merge()

    @property
    def merged(self) -> bool:
        return self._unmerged_weight is not None

    def forward(self, x):
        y = self.base_layer(x)                                       # (..., out)
        if self.disabled or self.merged:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scale   # (..., r) -> (..., out)

    def delta_weight(self):
        """scale * B @ A, (out, in), in the base weight's dtype and on its device."""
        B, A = self.lora_B.weight.data, self.lora_A.weight.data
        return (B @ A) * B.dtype.type(self.scale)

    def merge(self) -> None:
        if self.merged:
            return
        w = getattr(self.base_layer, "weight", None)
        if not isinstance(w, Parameter):
            raise ValueError(f"cannot merge LoRA into a {type(self.base_layer).__name__} (a quantized base has "
                             "no float weight to add to): use merge_and_unload(), which dequantizes it")
        self._unmerged_weight = w.data
        w.data = w.data + self.delta_weight().astype(w.dtype)

    def unmerge(self) -> None:
        if self.merged:
            self.base_layer.weight.data, self._unmerged_weight = self._unmerged_weight, None

    def merged_linear(self) -> Linear:
        """A plain Linear equal to this layer (a quantized base is dequantized)."""
        self.unmerge()
        base = self.base_layer
        if isinstance(getattr(base, "weight", None), Parameter):
            w = base.weight.data
        else:
            w = backend.to_device(base.dequantized_weight(), self.lora_A.weight.device)
        has_bias = base.bias is not None
        with skip_init():   # no random init of weights about to be replaced
            out = Linear(self.in_features, self.out_features, bias=has_bias)
        out.weight.data = (w + self.delta_weight()).astype(self.lora_A.weight.dtype)
        if has_bias:
            out.bias.data = base.bias.data.copy()
        return out

    def extra_repr(self):
        return f"r={self.r}, scale={self.scale:g}" + (", merged" if self.merged else "")


_ACTIVATIONS = {"relu": lambda h: h.relu(), "gelu": F.gelu, "silu": F.silu, "tanh": lambda h: h.tanh()}


class BottleneckAdapter(Module):
    """h + up(f(down(h))) (Houlsby et al. 2019): down to dim // reduction_factor units, a nonlinearity,
    and up again; up starts at zero, so the adapter starts as the identity."""

    def __init__(self, dim: int, reduction_factor: int = 16, non_linearity: str = "relu"):
        super().__init__()
        hidden = max(1, dim // reduction_factor)
        self.down = Linear(dim, hidden)
        self.up = Linear(hidden, dim)
        self.up.weight.data[...] = 0
        self.up.bias.data[...] = 0
        self.non_linearity = non_linearity
        self.disabled = False

    def forward(self, h):
        if self.disabled:
            return h
        return h + self.up(_ACTIVATIONS[self.non_linearity](self.down(h)))   # (..., dim) -> (..., hidden) -> (..., dim)

    def extra_repr(self):
        return f"{self.down.in_features} -> {self.down.out_features}, {self.non_linearity}"


class WithAdapter(Module):
    """A sub-layer (a block's attention or MLP) whose output goes through an adapter before the residual add."""

    def __init__(self, base_layer: Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base_layer, self.adapter = base_layer, adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.base_layer(*args, **kwargs))


class SoftPrompt(Module):
    """num_virtual_tokens learned input embeddings that GPT.forward puts before every sequence."""

    def __init__(self, weight: np.ndarray):
        super().__init__()
        if weight.ndim != 2:
            raise ValueError(f"SoftPrompt: weight must be (num_virtual_tokens, dim), got shape {weight.shape}")
        self.weight = Parameter(weight)
        self.num_virtual_tokens = weight.shape[0]

    def forward(self, batch: int) -> Tensor:
        P, C = self.weight.shape
        return self.weight.reshape(1, P, C).broadcast_to(batch, P, C)     # (B, P, C)

    def extra_repr(self):
        return f"num_virtual_tokens={self.num_virtual_tokens}, dim={self.weight.shape[1]}"


def prompt_init(config, wte: np.ndarray, tokenizer=None) -> np.ndarray:
    """The soft prompt's starting embeddings (P, C) for a PromptTuningConfig, from the token embeddings wte (V, C)."""
    P, (V, C) = config.num_virtual_tokens, wte.shape
    rng = get_rng()
    if config.prompt_tuning_init == "RANDOM":
        return rng.standard_normal((P, C)).astype(wte.dtype)
    if config.prompt_tuning_init == "SAMPLE_VOCAB":
        return wte[rng.integers(0, V, P)].copy()
    if tokenizer is None:
        raise ValueError("prompt_tuning_init 'TEXT' needs the tokenizer: get_peft_model(model, config, tokenizer=...)")
    ids = list(tokenizer.encode(config.prompt_tuning_init_text))
    if not ids:
        raise ValueError("prompt_tuning_init_text encodes to no tokens")
    ids = (ids * (-(-P // len(ids))))[:P]       # repeated to length, then cut, as PEFT does
    return wte[np.asarray(ids)].copy()
