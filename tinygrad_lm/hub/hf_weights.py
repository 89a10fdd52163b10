"""Hugging Face tensor names and layouts <-> our GPT's state_dict.

GPT-2 already uses our names; its Conv1D layers store weights as (in, out), ours (like Linear)
as (out, in), so those are transposed, and the causal-mask buffers (attn.bias, attn.masked_bias)
are not weights. Llama-family models keep q, k, v (and gate, up) apart; our attention reads
them from one stacked c_attn (one matmul), so they are stacked here at load and split at save."""
from __future__ import annotations

import re

import numpy as np

from ..models.gpt import GPTConfig

GPT2_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
GPT2_BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$")
LLAMA_LAYER = {  # ours -> HF, inside layer i; stacked ones are lists in stacking order
    "ln_1.weight": "input_layernorm.weight", "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_attn.weight": ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"],
    "attn.c_attn.bias": ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"],
    "attn.c_proj.weight": "self_attn.o_proj.weight", "attn.c_proj.bias": "self_attn.o_proj.bias",
    "mlp.c_fc.weight": ["mlp.gate_proj.weight", "mlp.up_proj.weight"],
    "mlp.c_fc.bias": ["mlp.gate_proj.bias", "mlp.up_proj.bias"],
    "mlp.c_proj.weight": "mlp.down_proj.weight", "mlp.c_proj.bias": "mlp.down_proj.bias",
}
LLAMA_TOP = {"transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}


class WeightsError(ValueError):
    """A checkpoint's tensors do not fit the model its config describes."""


def _expected_names(config: GPTConfig) -> list[str]:
    from ..models.gpt import GPT  # only to list the names: parameters are never allocated here
    return list(GPT.parameter_shapes(config))


def weights_from_hf(family: str, hf: dict, config: GPTConfig, where) -> dict:
    """Our state_dict (names -> arrays) from an HF-named tensor dict, which it empties as it goes:
    each stacked q/k/v or gate/up copy replaces its parts, so loading never holds two copies of
    the weights. Missing tensors -> WeightsError."""
    if family == "gpt2":
        ours = {}
        for name in list(hf):
            arr = hf.pop(name)
            if GPT2_BUFFERS.search(name):
                continue
            name = name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name
            ours[name] = arr.T if name.endswith(GPT2_CONV1D) else arr
    else:
        ours = {}
        for name, hf_name in LLAMA_TOP.items():
            if hf_name in hf:
                ours[name] = hf.pop(hf_name)
        for i in range(config.n_layer):
            for name, hf_names in LLAMA_LAYER.items():
                parts = [f"model.layers.{i}.{n}" for n in ([hf_names] if isinstance(hf_names, str) else hf_names)]
                have = [p for p in parts if p in hf]
                if have and len(have) < len(parts):
                    raise WeightsError(f"{where}: has {have[0]} but lacks {sorted(set(parts) - set(have))[0]}")
                if have:
                    ours[f"transformer.h.{i}.{name}"] = (hf.pop(parts[0]) if len(parts) == 1
                                                         else np.concatenate([hf.pop(p) for p in parts], axis=0))
        ours.update(hf)  # whatever is left is unexpected: reported below
    if config.tie_weights:
        ours.pop("lm_head.weight", None)  # tied checkpoints may still carry a copy; ours is the embedding
        if "transformer.wte.weight" in ours:
            ours["lm_head.weight"] = ours["transformer.wte.weight"]
    expected = _expected_names(config)
    missing = [n for n in expected if n not in ours]
    if missing:
        raise WeightsError(f"{where}: lacks weights the config needs: {', '.join(missing[:5])}"
                           + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    unexpected = sorted(set(ours) - set(expected))
    if unexpected:
        raise WeightsError(f"{where}: holds tensors this {family} config has no place for: "
                           f"{', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    return ours


def hf_parts(family: str, name: str, config: GPTConfig, rows: int) -> list[tuple[str, int, int]]:
    """Where our tensor ``name`` (with ``rows`` rows) goes in an HF checkpoint: [(HF name, first row,
    end row)]. One part, except a Llama-family stacked tensor (c_attn -> q, k, v; c_fc -> gate, up).
    Also names the HF modules of a LoRA on one of our Linear layers (tinygrad_lm.peft)."""
    if family == "gpt2":
        return [(name, 0, rows)]
    if name in LLAMA_TOP:
        return [(LLAMA_TOP[name], 0, rows)]
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", name)
    if m is None or m[2] not in LLAMA_LAYER:
        raise WeightsError(f"{name}: no Hugging Face {family} name for it")
    hf_names = LLAMA_LAYER[m[2]]
    if isinstance(hf_names, str):
        return [(f"model.layers.{m[1]}.{hf_names}", 0, rows)]
    q, kv = config.n_head * config.hs, config.n_kv_head * config.hs
    cuts = [0, q, q + kv, rows] if m[2].startswith("attn.") else [0, rows // 2, rows]
    return [(f"model.layers.{m[1]}.{n}", lo, hi) for n, lo, hi in zip(hf_names, cuts, cuts[1:])]


def weights_to_hf(family: str, ours: dict, config: GPTConfig) -> dict:
    """HF-named tensors (contiguous) from our state_dict; a tied lm_head is left out, as HF saves it."""
    hf = {}
    for name, arr in ours.items():
        if name == "lm_head.weight" and config.tie_weights:
            continue
        if family == "gpt2" and name.endswith(GPT2_CONV1D):
            arr = arr.T
        for hf_name, lo, hi in hf_parts(family, name, config, arr.shape[0]):
            hf[hf_name] = np.ascontiguousarray(arr[lo:hi] if (lo, hi) != (0, arr.shape[0]) else arr)
    return hf
