"""What each parameter-efficient method trains, named as Hugging Face PEFT names it.

Each config knows its ``peft_type`` and turns into and out of the ``adapter_config.json`` dict that
PEFT writes, so PEFT reads our LoRA and prompt-tuning adapters and we read theirs. Bottleneck
adapters (Houlsby et al. 2019) have no PEFT class; their config uses the same file with our own
``peft_type`` "BOTTLENECK"."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

NONLINEARITIES = ("relu", "gelu", "silu", "tanh")
PROMPT_INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")
LORA_BIAS = ("none", "all", "lora_only")


def _positive_int(owner: str, name: str, v) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {v!r}")


def _one_of(owner: str, name: str, v, allowed) -> None:
    if v not in allowed:
        raise ValueError(f"{owner}: {name} must be one of {allowed}, got {v!r}")


@dataclass
class LoraConfig:
    """y = base(x) + B(A(dropout(x))) * scale, scale = lora_alpha / r (or / sqrt(r) with use_rslora).

    target_modules: module names (a Linear whose dotted path ends with one of them, e.g. "c_attn"),
    a regular expression matched against the whole path (a str other than "all-linear"), or
    "all-linear" (every Linear but the output layer). rank_pattern / alpha_pattern: per-module r and
    lora_alpha, keyed by a name or pattern as in PEFT."""
    r: int = 8
    lora_alpha: float = 16
    lora_dropout: float = 0.0
    target_modules: tuple | str = ("c_attn",)
    bias: str = "none"
    use_rslora: bool = False
    rank_pattern: dict = field(default_factory=dict)
    alpha_pattern: dict = field(default_factory=dict)
    base_model_name_or_path: str | None = None
    peft_type = "LORA"

    def __post_init__(self):
        _positive_int("LoraConfig", "r", self.r)
        if not isinstance(self.lora_alpha, (int, float)) or isinstance(self.lora_alpha, bool) \
                or not math.isfinite(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"LoraConfig: lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise ValueError(f"LoraConfig: lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        _one_of("LoraConfig", "bias", self.bias, LORA_BIAS)
        if isinstance(self.target_modules, (list, set)):
            self.target_modules = tuple(self.target_modules)
        if not isinstance(self.target_modules, (str, tuple)) or not self.target_modules \
                or isinstance(self.target_modules, tuple) and not all(isinstance(t, str) and t
                                                                       for t in self.target_modules):
            raise ValueError(f"LoraConfig: target_modules must be module names, a pattern or 'all-linear', "
                             f"got {self.target_modules!r}")

    def scale(self, r: int, alpha: float) -> float:
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def to_peft(self) -> dict:
        d = {k: v for k, v in asdict(self).items()}
        d["target_modules"] = (self.target_modules if isinstance(self.target_modules, str)
                               else sorted(self.target_modules))
        return {"peft_type": self.peft_type, "task_type": "CAUSAL_LM", **d, "fan_in_fan_out": False,
                "init_lora_weights": True, "modules_to_save": None, "inference_mode": True}


@dataclass
class BottleneckConfig:
    """Houlsby adapters: after the attention and after the MLP of every block (``target``), h + up(f(down(h)))
    with down to dim // reduction_factor units and up initialised to zero, so training starts at the base."""
    reduction_factor: int = 16
    non_linearity: str = "relu"
    target: tuple = ("attn", "mlp")
    base_model_name_or_path: str | None = None
    peft_type = "BOTTLENECK"

    def __post_init__(self):
        _positive_int("BottleneckConfig", "reduction_factor", self.reduction_factor)
        _one_of("BottleneckConfig", "non_linearity", self.non_linearity, NONLINEARITIES)
        self.target = tuple(self.target)
        if not self.target or not set(self.target) <= {"attn", "mlp"}:
            raise ValueError(f"BottleneckConfig: target must name 'attn' and/or 'mlp', got {self.target!r}")

    def to_peft(self) -> dict:
        return {"peft_type": self.peft_type, "task_type": "CAUSAL_LM", **asdict(self),
                "target": list(self.target)}


@dataclass
class PromptTuningConfig:
    """num_virtual_tokens learned embeddings before every sequence. prompt_tuning_init: "RANDOM"
    (N(0, 1), as PEFT's nn.Embedding), "SAMPLE_VOCAB" (rows of the token embedding matrix) or
    "TEXT" (the embeddings of prompt_tuning_init_text's tokens, repeated to length)."""
    num_virtual_tokens: int = 20
    prompt_tuning_init: str = "RANDOM"
    prompt_tuning_init_text: str | None = None
    base_model_name_or_path: str | None = None
    peft_type = "PROMPT_TUNING"

    def __post_init__(self):
        _positive_int("PromptTuningConfig", "num_virtual_tokens", self.num_virtual_tokens)
        _one_of("PromptTuningConfig", "prompt_tuning_init", self.prompt_tuning_init, PROMPT_INITS)
        if self.prompt_tuning_init == "TEXT" and not self.prompt_tuning_init_text:
            raise ValueError("PromptTuningConfig: prompt_tuning_init 'TEXT' needs prompt_tuning_init_text")

    def to_peft(self, token_dim: int, n_layer: int, n_head: int) -> dict:
        return {"peft_type": self.peft_type, "task_type": "CAUSAL_LM", **asdict(self), "token_dim": token_dim,
                "num_transformer_submodules": 1, "num_layers": n_layer, "num_attention_heads": n_head,
                "tokenizer_name_or_path": self.base_model_name_or_path, "inference_mode": True}


CONFIGS = {c.peft_type: c for c in (LoraConfig, BottleneckConfig, PromptTuningConfig)}


def config_from_peft(d: dict, where) -> LoraConfig | BottleneckConfig | PromptTuningConfig:
    """The config of an adapter_config.json dict; PEFT's other keys are ignored, an unknown type is an error."""
    kind = d.get("peft_type")
    if kind not in CONFIGS:
        raise ValueError(f"{where}: peft_type {kind!r} is not one we load (we load {sorted(CONFIGS)})")
    if d.get("task_type") not in (None, "CAUSAL_LM"):
        raise ValueError(f"{where}: task_type {d.get('task_type')!r}; only CAUSAL_LM adapters fit our models")
    cls = CONFIGS[kind]
    known = {f.name for f in fields(cls)}
    args = {k: v for k, v in d.items() if k in known and v is not None}
    if kind == "LORA" and isinstance(args.get("target_modules"), list):
        args["target_modules"] = tuple(args["target_modules"])
    if kind == "PROMPT_TUNING" and d.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{where}: num_transformer_submodules {d['num_transformer_submodules']}: "
                         "a decoder-only model has one")
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None
