"""Adapter folders in Hugging Face PEFT's layout: adapter_config.json + adapter_model.safetensors.

Tensor names are those of the Hugging Face export of the base model (our save_pretrained), under
"base_model.model.", with the adapter name left out, as PEFT saves them:
- LoRA: <module>.lora_A.weight (r, in) and <module>.lora_B.weight (out, r). GPT-2 keeps our module
  names (HF's Conv1D layers: "fan_in_fan_out": true). In a Llama-family model our c_attn stacks
  q_proj, k_proj, v_proj (and c_fc stacks gate_proj, up_proj): one LoRA there is written as one
  LoRA per HF module with the same A and B's rows split, which is the same function. Reading
  PEFT's separate q/k/v LoRAs back stacks them into one LoRA of the summed rank (A's stacked,
  B block-diagonal, each part's scale folded into its B), again the same function.
- prompt tuning: "prompt_embeddings" (num_virtual_tokens, dim).
- bottleneck adapters (no PEFT class): our own parameter names, peft_type "BOTTLENECK".
A model with no Hugging Face class (e.g. rope + layernorm) keeps our names throughout."""
from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from .. import backend
from ..hub.hf_config import UnsupportedModelError, family_of
from ..hub.hf_weights import hf_parts
from ..hub.pretrained import read_json_object
from ..hub.safetensors_file import atomic_write, read_safetensors, write_safetensors
from .config import LoraConfig, PromptTuningConfig, config_from_peft
from .model import PeftModel, _pattern_value, get_peft_model

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
PROMPT_KEY = "prompt_embeddings"


def _family(model) -> str | None:
    """"gpt2" or "llama" (how HF names this model's tensors), or None: no HF class, our names."""
    try:
        family = family_of(model.config)
    except UnsupportedModelError:
        return None
    return "gpt2" if family == "gpt2" else "llama"


def _parts(family, path: str, model, rows: int) -> list[tuple[str, int, int]]:
    """The HF modules our Linear ``path`` is written as: [(HF module path, first row, end row)]."""
    if family is None:
        return [(path, 0, rows)]
    return [(name[:-len(".weight")], lo, hi) for name, lo, hi in hf_parts(family, path + ".weight", model.config, rows)]


def _host(a) -> np.ndarray:
    return np.ascontiguousarray(backend.to_numpy(a), dtype=np.float32)


def save_adapter(peft: PeftModel, folder) -> Path:
    """Write what the adapter trained (never the base weights) and its config; returns the folder."""
    folder = Path(folder)
    model, config = peft.model, peft.peft_config
    family = _family(model)
    tensors = {}
    if isinstance(config, LoraConfig):
        d = config.to_peft()
        targets, ranks, alphas = set(), {}, {}
        for path, layer in peft.lora_layers():
            A, B = _host(layer.lora_A.weight.data), _host(layer.lora_B.weight.data)
            alpha = layer.scale * (np.sqrt(layer.r) if config.use_rslora else layer.r)
            for hf_path, lo, hi in _parts(family, path, model, layer.out_features):
                tensors[f"{PREFIX}{hf_path}.lora_A.weight"] = A
                tensors[f"{PREFIX}{hf_path}.lora_B.weight"] = np.ascontiguousarray(B[lo:hi])
                targets.add(hf_path.split(".")[-1])
                if layer.r != config.r:
                    ranks[hf_path] = layer.r
                if not np.isclose(alpha, config.lora_alpha, rtol=1e-6):
                    alphas[hf_path] = float(alpha)
        for name, p in model.named_parameters():   # bias "all" / "lora_only": the trained biases
            if p.requires_grad and name.endswith(".bias"):
                arr = _host(p.data)
                for hf_path, lo, hi in _parts(family, name[:-len(".bias")], model, arr.shape[0]):
                    tensors[f"{PREFIX}{hf_path}.bias"] = np.ascontiguousarray(arr[lo:hi])
        d.update(target_modules=sorted(targets), rank_pattern=ranks, alpha_pattern=alphas,
                 fan_in_fan_out=family == "gpt2")
    elif isinstance(config, PromptTuningConfig):
        c = model.config
        d = config.to_peft(c.n_embd, c.n_layer, c.n_head)
        tensors[PROMPT_KEY] = _host(model.soft_prompt.weight.data)
    else:
        d = config.to_peft()
        for name, p in model.named_parameters():
            if p.requires_grad:
                tensors[PREFIX + name] = _host(p.data)
    if family is None:
        d["tinygrad_lm_names"] = True   # PEFT cannot apply it to any transformers model
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
    text = json.dumps(d, indent=2) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return folder


def read_adapter_config(folder) -> tuple[object, dict]:
    """(config, the raw adapter_config.json dict) of an adapter folder; clear errors for a bad folder."""
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG_NAME} (not an adapter folder)")
    d = read_json_object(path, "adapter config")
    return config_from_peft(d, path), d


def load_adapter(model, folder, is_trainable: bool = False) -> PeftModel:
    """PeftModel.from_pretrained: the adapter of ``folder`` on ``model`` (which it changes in place)."""
    folder = Path(folder)
    config, raw = read_adapter_config(folder)
    tensors = read_safetensors(folder / WEIGHTS_NAME)
    where = folder / WEIGHTS_NAME
    family = None if raw.get("tinygrad_lm_names") else _family(model)
    if isinstance(config, LoraConfig):
        peft = _load_lora(model, config, tensors, family, where)
    elif isinstance(config, PromptTuningConfig):
        if PROMPT_KEY not in tensors:
            raise ValueError(f"{where}: no {PROMPT_KEY!r} tensor")
        emb = tensors.pop(PROMPT_KEY)
        want = (config.num_virtual_tokens, model.config.n_embd)
        if emb.shape != want:
            raise ValueError(f"{where}: {PROMPT_KEY} has shape {emb.shape}; this model and config need {want}")
        peft = get_peft_model(model, config)
        model.soft_prompt.weight.data = backend.to_device(emb.astype(model.soft_prompt.weight.dtype),
                                                          model.soft_prompt.weight.device)
    else:
        peft = get_peft_model(model, config)
        state = {k[len(PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(PREFIX)}
        own = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != own:
            raise ValueError(f"{where}: does not fit this model's adapters: missing {sorted(own - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - own)[:3]}")
        model.load_state_dict(state, strict=False)
    if tensors:
        raise ValueError(f"{where}: holds tensors this model has no place for: {sorted(tensors)[:3]}")
    if not is_trainable:
        peft.requires_grad_(False)
    peft.eval()
    return peft


def _load_lora(model, config: LoraConfig, tensors: dict, family, where) -> PeftModel:
    """Make the LoRA layers that the file's tensors describe, then fill them (see the module docstring)."""
    from .model import BASE_LINEARS
    found = {}   # our Linear path -> [(first row, end row, A, B, scale)]
    for path, m in model.named_modules():
        if not isinstance(m, BASE_LINEARS):
            continue
        for hf_path, lo, hi in _parts(family, path, model, m.out_features):
            key = f"{PREFIX}{hf_path}.lora_"
            if key + "A.weight" not in tensors:
                continue
            A, B = tensors.pop(key + "A.weight"), tensors.pop(key + "B.weight", None)
            if B is None:
                raise ValueError(f"{where}: has {key}A.weight but no {key}B.weight")
            r = A.shape[0]
            if A.ndim != 2 or A.shape[1] != m.in_features or B.shape != (hi - lo, r):
                raise ValueError(f"{where}: {key}A/B have shapes {A.shape}, {B.shape}; {hf_path} needs "
                                 f"(r, {m.in_features}) and ({hi - lo}, r)")
            alpha = _pattern_value(hf_path, config.alpha_pattern, config.lora_alpha)
            found.setdefault(path, []).append((lo, hi, A, B, config.scale(r, alpha)))
    if not found:
        raise ValueError(f"{where}: no LoRA tensor fits this model (expected names like "
                         f"{PREFIX}<module>.lora_A.weight for its Linear layers)")
    targets = "|".join(re.escape(p) for p in found)
    peft = get_peft_model(model, replace(config, target_modules=f"({targets})"))
    peft.peft_config = config
    layers = dict(peft.lora_layers())
    for path, parts in found.items():
        A, B, scale = _stack(parts, layers[path].out_features)
        layer = layers[path]
        ref = layer.lora_A.weight
        layer.lora_A.weight.data = backend.to_device(A.astype(ref.dtype), ref.device)
        layer.lora_B.weight.data = backend.to_device(B.astype(ref.dtype), ref.device)
        layer.r, layer.scale = A.shape[0], scale
        layer.lora_A.out_features = layer.lora_B.in_features = A.shape[0]
    for name, p in model.named_parameters():   # biases trained with bias "all" / "lora_only"
        if not name.endswith(".bias"):
            continue
        keys = [(f"{PREFIX}{hf}.bias", lo, hi) for hf, lo, hi in _parts(family, name[:-5], model, p.shape[0])]
        if all(k in tensors for k, _, _ in keys):
            arr = np.concatenate([tensors.pop(k) for k, _, _ in keys])
            if arr.shape != p.shape:
                raise ValueError(f"{where}: bias of {name} has shape {arr.shape}, the model's is {p.shape}")
            p.data = backend.to_device(arr.astype(p.dtype), p.device)
            p.requires_grad_(True)
    return peft


def _stack(parts, out_features):
    """One (A, B, scale) for the LoRA parts of one of our stacked Linears. Parts that cover every
    row with one shared A and scale are the LoRA we saved: B's rows are put back together. Any
    other set (PEFT's own q/k/v LoRAs) becomes a LoRA of the summed rank with scales in B."""
    parts = sorted(parts, key=lambda t: t[0])
    covered = [(lo, hi) for lo, hi, *_ in parts]
    rows = all(a[1] == b[0] for a, b in zip(covered, covered[1:])) and covered[0][0] == 0 \
        and covered[-1][1] == out_features
    A0, s0 = parts[0][2], parts[0][4]
    if rows and all(np.array_equal(p[2], A0) and p[4] == s0 for p in parts):
        return A0, np.concatenate([p[3] for p in parts]), s0
    R = sum(p[2].shape[0] for p in parts)
    A = np.concatenate([p[2] for p in parts])
    B = np.zeros((out_features, R), np.float32)
    off = 0
    for lo, hi, a, b, scale in parts:
        B[lo:hi, off:off + a.shape[0]] = b * scale
        off += a.shape[0]
    return A, B, 1.0
