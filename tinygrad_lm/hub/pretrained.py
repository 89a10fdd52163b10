"""Load a pretrained model (and its tokenizer) by name or path; save one back as an HF folder or GGUF."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ..models.gpt import GPT, GPTConfig
from ..nn.layers import skip_init
from .hf_config import config_from_hf, config_to_hf, family_of, model_type
from .hf_weights import weights_from_hf, weights_to_hf
from .resolve import ModelNotFoundError, resolve
from .safetensors_file import INDEX_NAME, SINGLE_NAME, atomic_write, read_safetensors, read_sharded, write_safetensors

DTYPES = {"float32": np.float32, "float64": np.float64}
OWN_TOKENIZER = "tinygrad_lm_tokenizer.json"  # char/byte tokenizers, which transformers has no class for


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object (a model's or an adapter's config); errors name the file."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the {what} ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(d).__name__}")
    return d


def _read_config(folder: Path) -> dict:
    return read_json_object(folder / "config.json", "model config")


def read_pretrained(path: Path, weights: bool = True) -> tuple[GPTConfig, dict, dict]:
    """(GPTConfig, our state_dict, info) of an HF folder or a .gguf file, on the host in float32;
    weights=False reads the config only (the state_dict is empty)."""
    if path.suffix == ".gguf":
        from .gguf_model import read_gguf_model
        hf_config, tensors, info = read_gguf_model(path, weights)
    elif not weights:
        hf_config, tensors, info = _read_config(path), {}, {"format": "safetensors"}
    else:
        hf_config = _read_config(path)
        if (path / INDEX_NAME).is_file() or (path / SINGLE_NAME).is_file():
            tensors = read_sharded(path)
        else:
            shards = sorted(path.glob("*.safetensors"))
            if len(shards) != 1:
                raise ModelNotFoundError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME} (only safetensors weights are "
                                         "read: never pickled pytorch_model.bin files, which can run code)")
            tensors = read_safetensors(shards[0])
        info = {"format": "safetensors", "dtypes": sorted({str(a.dtype) for a in tensors.values()})}
    config = config_from_hf(hf_config, path)
    family = "gpt2" if model_type(hf_config, path) == "gpt2" else "llama"
    state = weights_from_hf(family, tensors, config, path) if weights else {}
    info.update(hf_config=hf_config, family=family)
    return config, state, info


def load_model(name_or_path, dtype="float32", device: str = "cpu") -> GPT:
    """GPT.from_pretrained: the model of a name or path (see resolve), in eval mode."""
    if str(dtype) not in DTYPES:
        raise ValueError(f"from_pretrained: dtype must be one of {list(DTYPES)}, got {dtype!r}")
    path = resolve(name_or_path)
    config, state, info = read_pretrained(path)
    with skip_init():  # every parameter is overwritten below: drawing random numbers would only cost time
        model = GPT(config)
    _adopt(model, state, DTYPES[str(dtype)], path)
    model.name_or_path, model.source, model.source_info = str(name_or_path), path, info
    return model.to(device).eval()


def _adopt(model: GPT, state: dict, dtype, where) -> None:
    """Make the loaded arrays the (uninitialised) model's parameters: an array we own already, of the
    right dtype and layout, is used as it is rather than copied (the weights are in memory once)."""
    own = dict(model._named_tensors())
    for name, p in own.items():
        if state[name].shape != p.shape:
            raise ValueError(f"{where}: '{name}' has shape {state[name].shape} but the config asks for {p.shape}")
    for name, p in own.items():
        arr = state.pop(name)
        if not (type(arr) is np.ndarray and arr.dtype == dtype and arr.flags.c_contiguous and arr.flags.owndata
                and arr.flags.writeable):
            arr = np.array(arr, dtype=dtype, order="C")
        p.data = arr


def load_pretrained_tokenizer(name_or_path):
    """The tokenizer of a name or path (with its chat template and bos/eos tokens when it has them)."""
    from ..tokenizers import load_tokenizer
    path = resolve(name_or_path)
    if path.suffix == ".gguf":
        return load_tokenizer(path)
    if (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
        return load_tokenizer(path)
    if (path / OWN_TOKENIZER).is_file():
        return load_tokenizer(path / OWN_TOKENIZER)
    raise ModelNotFoundError(f"{path} holds no tokenizer (tokenizer.json, vocab.json + merges.txt, or {OWN_TOKENIZER})")


def _special_ids(tokenizer) -> dict:
    out = {}
    for key in ("bos", "eos"):
        name = getattr(tokenizer, f"{key}_token", None)
        if name is not None:
            out[f"{key}_token_id"] = tokenizer.token_id(name)
    return out


def _write_json(path: Path, d: dict):
    text = json.dumps(d, indent=2, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_pretrained(model: GPT, folder, tokenizer=None) -> Path:
    """model.save_pretrained: config.json, model.safetensors (float32), generation_config.json and,
    with a tokenizer, tokenizer.json + tokenizer_config.json (BPE) or our own JSON (char/byte)."""
    folder = Path(folder)
    c = model.config
    family = family_of(c)  # fails first, before anything is written, for a model HF has no class for
    ids = _special_ids(tokenizer) if tokenizer is not None and hasattr(tokenizer, "chat_info") else {}
    hf_config = config_to_hf(c, ids)
    if "rope_freqs" in hf_config:
        raise ValueError("this model's RoPE scaling came from a GGUF as per-frequency factors, which an HF "
                         "config.json cannot hold; save it with save_gguf")
    folder.mkdir(parents=True, exist_ok=True)
    ours = {k: v.astype(np.float32, copy=False) for k, v in model.state_dict().items()}
    hf = weights_to_hf("gpt2" if family == "gpt2" else "llama", ours, c)
    del ours
    write_safetensors(folder / SINGLE_NAME, hf, metadata={"format": "pt"})  # transformers asks for "pt"
    del hf
    (folder / INDEX_NAME).unlink(missing_ok=True)  # a stale index would win over the new single file
    _write_json(folder / "config.json", hf_config)
    _write_json(folder / "generation_config.json", {"_from_model_config": True, **ids})
    if tokenizer is not None:
        if hasattr(tokenizer, "chat_info"):  # BPE: the files transformers' PreTrainedTokenizerFast reads
            from ..tokenizers.formats import hf_tokenizer_config, save_hf_json
            save_hf_json(tokenizer, folder / "tokenizer.json")
            _write_json(folder / "tokenizer_config.json", hf_tokenizer_config(tokenizer))
        else:
            warnings.warn(f"a {type(tokenizer).__name__} has no Hugging Face equivalent: saved as {OWN_TOKENIZER}, "
                          "which tinygrad_lm reads and transformers does not", stacklevel=3)
            tokenizer.save(folder / OWN_TOKENIZER)
    return folder


def save_gguf(model: GPT, path, dtype: str = "f32", tokenizer=None) -> Path:
    """model.save_gguf: a GGUF file (llama architecture) in f32, f16 or q8_0, with the tokenizer."""
    from .gguf_model import bpe_tokenizer_gguf_meta, write_gguf_model
    c = model.config
    family = family_of(c)
    if family == "gpt2":
        raise ValueError("save_gguf writes Llama-family models (rope + rmsnorm + swiglu); save a GPT-2 model "
                         "with save_pretrained")
    meta, ids = None, {}
    if tokenizer is not None:
        if not hasattr(tokenizer, "chat_info"):
            raise ValueError(f"a GGUF file holds a byte-level BPE tokenizer; got a {type(tokenizer).__name__}")
        ids = _special_ids(tokenizer)
        meta = bpe_tokenizer_gguf_meta(tokenizer, chat_template=tokenizer.chat_template,
                                       bos=ids.get("bos_token_id"), eos=ids.get("eos_token_id"))
    ours = {k: v.astype(np.float32, copy=False) for k, v in model.state_dict().items()}
    hf = weights_to_hf("llama", ours, c)
    del ours
    hf_config = config_to_hf(c, ids)
    write_gguf_model(Path(path), hf_config, hf, dtype=dtype, tokenizer_meta=meta)
    return Path(path)
