"""Hugging Face config.json <-> GPTConfig, for the families we map.

"gpt2" is GPT2LMHeadModel. "llama" is LlamaForCausalLM and the models that share its weight
layout: SmolLM/SmolLM2, TinyLlama, Llama 3.x (with "llama3" RoPE scaling), Mistral (a sliding
window caps the context, see below) and Qwen2 (biases on q, k and v only)."""
from __future__ import annotations

from ..models.gpt import GPTConfig

LLAMA_TYPES = ("llama", "mistral", "qwen2")
MODEL_TYPES = ("gpt2",) + LLAMA_TYPES
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                    "gelu": "gelu"}
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM"}


class UnsupportedModelError(ValueError):
    """A checkpoint whose architecture or option tinygrad_lm's GPT cannot represent."""


def model_type(d: dict, where) -> str:
    """The family of an HF config: its model_type, else guessed from its architectures."""
    kind = d.get("model_type")
    if kind is None:
        by_arch = {v: k for k, v in ARCHITECTURES.items()}
        kind = next((by_arch[a] for a in d.get("architectures") or () if a in by_arch), None)
    if kind not in MODEL_TYPES:
        raise UnsupportedModelError(f"{where}: model_type {kind!r} is not supported; tinygrad_lm maps "
                                    f"{', '.join(MODEL_TYPES)} (architectures {d.get('architectures')})")
    return kind


def _get(d: dict, key: str, where, default=...):
    if key in d and d[key] is not None:
        return d[key]
    if default is ...:
        raise UnsupportedModelError(f"{where}: config.json lacks {key!r}")
    return default


def rope_settings(d: dict) -> tuple[float, dict | None]:
    """(theta, scaling) from either spelling: transformers < 5 writes rope_theta and rope_scaling,
    transformers 5 one rope_parameters dict holding both."""
    params = d.get("rope_parameters") or {}
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    scaling = d.get("rope_scaling") or {k: v for k, v in params.items() if k != "rope_theta"} or None
    if scaling and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    if d.get("rope_freqs"):  # a GGUF's rope_freqs.weight (Llama 3.1 in llama.cpp's terms): the divisors themselves
        scaling = {"rope_type": "freq_factors", "factors": [float(f) for f in d["rope_freqs"]]}
    return theta, scaling


def config_from_hf(d: dict, where="config.json") -> GPTConfig:
    """GPTConfig of an HF config.json dict (dropout 0: these are loaded to run or fine-tune)."""
    kind = model_type(d, where)
    if kind == "gpt2":
        act = d.get("activation_function", "gelu_new")
        if act not in GPT2_ACTIVATIONS:
            raise UnsupportedModelError(f"{where}: GPT-2 activation {act!r} is not supported "
                                        f"(known: {', '.join(GPT2_ACTIVATIONS)})")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if d.get(flag):
                raise UnsupportedModelError(f"{where}: GPT-2 option {flag}=true is not supported")
        if d.get("scale_attn_weights") is False:
            raise UnsupportedModelError(f"{where}: GPT-2 option scale_attn_weights=false is not supported")
        n_embd = _get(d, "n_embd", where)
        return GPTConfig(vocab_size=_get(d, "vocab_size", where), block_size=_get(d, "n_positions", where),
                         n_layer=_get(d, "n_layer", where), n_head=_get(d, "n_head", where), n_embd=n_embd,
                         dropout=0.0, bias=True, pos="learned", norm="layernorm", mlp=GPT2_ACTIVATIONS[act],
                         tie_weights=d.get("tie_word_embeddings", True), mlp_hidden=d.get("n_inner") or None,
                         norm_eps=float(d.get("layer_norm_epsilon", 1e-5)))
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{where}: hidden_act {act!r} is not supported (only silu, i.e. SwiGLU)")
    if kind == "qwen2":
        bias, qkv_bias = False, True
    else:
        bias = bool(d.get("attention_bias", False))
        if bias != bool(d.get("mlp_bias", False)):
            raise UnsupportedModelError(f"{where}: attention_bias={d.get('attention_bias')} with "
                                        f"mlp_bias={d.get('mlp_bias')} is not supported (both or neither)")
        qkv_bias = None
    heads = _get(d, "num_attention_heads", where)
    hidden = _get(d, "hidden_size", where)
    block = _get(d, "max_position_embeddings", where)
    window = d.get("sliding_window") if kind == "mistral" or d.get("use_sliding_window") else None
    if window and window < block:  # every position then sees all of its context: exact, never approximate
        block = window
    theta, scaling = rope_settings(d)
    head_dim = d.get("head_dim")
    return GPTConfig(vocab_size=_get(d, "vocab_size", where), block_size=block,
                     n_layer=_get(d, "num_hidden_layers", where), n_head=heads,
                     n_kv_head=d.get("num_key_value_heads") or heads, n_embd=hidden, dropout=0.0, bias=bias,
                     pos="rope", norm="rmsnorm", mlp="swiglu", tie_weights=bool(d.get("tie_word_embeddings", False)),
                     mlp_hidden=_get(d, "intermediate_size", where),
                     head_dim=None if head_dim in (None, hidden // heads) else head_dim, qkv_bias=qkv_bias,
                     norm_eps=float(d.get("rms_norm_eps", 1e-6)), rope_theta=theta, rope_scaling=scaling)


def family_of(c: GPTConfig) -> str:
    """"gpt2", "llama" or "qwen2": the HF class that holds exactly this architecture."""
    if c.pos == "learned" and c.norm == "layernorm" and c.mlp in ("gelu", "gelu_tanh") and c.bias \
            and c.qkv_bias in (None, True) and c.n_kv_head == c.n_head and c.head_dim in (None, c.n_embd // c.n_head):
        return "gpt2"
    if c.pos == "rope" and c.norm == "rmsnorm" and c.mlp == "swiglu" and c.rope_pairing == "half":
        if c.qkv_bias and not c.bias:
            return "qwen2"
        if c.qkv_bias in (None, c.bias):
            return "llama"
    raise UnsupportedModelError(
        f"this model (pos={c.pos}, norm={c.norm}, mlp={c.mlp}, bias={c.bias}, qkv_bias={c.qkv_bias}, "
        f"rope_pairing={c.rope_pairing}) has no Hugging Face equivalent: GPT-2 is learned positions + layernorm + "
        "gelu with biases, Llama is rope + rmsnorm + swiglu; keep it as a tinygrad_lm checkpoint")


def config_to_hf(c: GPTConfig, extra: dict | None = None) -> dict:
    """config.json for transformers (GPT2LMHeadModel, LlamaForCausalLM or Qwen2ForCausalLM)."""
    kind = family_of(c)
    if kind == "gpt2":
        d = {"architectures": [ARCHITECTURES["gpt2"]], "model_type": "gpt2", "vocab_size": c.vocab_size,
             "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
             "n_head": c.n_head, "n_inner": c.mlp_hidden,
             "activation_function": "gelu_new" if c.mlp == "gelu_tanh" else "gelu",
             "layer_norm_epsilon": 1e-5 if c.norm_eps is None else c.norm_eps,
             "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
             "tie_word_embeddings": c.tie_weights}
    else:
        from ..nn.block import swiglu_hidden
        d = {"architectures": [ARCHITECTURES[kind]], "model_type": kind, "vocab_size": c.vocab_size,
             "max_position_embeddings": c.block_size, "hidden_size": c.n_embd,
             "intermediate_size": c.mlp_hidden or swiglu_hidden(c.n_embd), "num_hidden_layers": c.n_layer,
             "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head, "head_dim": c.hs,
             "hidden_act": "silu", "rms_norm_eps": 1e-6 if c.norm_eps is None else c.norm_eps,
             "rope_theta": c.rope_theta, "tie_word_embeddings": c.tie_weights, "attention_dropout": c.dropout}
        if kind == "llama":
            d.update(attention_bias=c.bias, mlp_bias=c.bias)
        if c.rope_scaling and c.rope_scaling.get("rope_type") == "freq_factors":
            d["rope_freqs"] = list(c.rope_scaling["factors"])  # GGUF can hold these; an HF config cannot
        elif c.rope_scaling:
            d["rope_scaling"] = dict(c.rope_scaling)
    d.update({"torch_dtype": "float32", **(extra or {})})
    return d
