"""GGUF model files (llama.cpp's format) in and out, in Hugging Face terms.

    config, tensors, info = read_gguf_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    config["hidden_size"], tensors["model.layers.0.self_attn.q_proj.weight"].shape   # 576, (576, 576)
    write_gguf_model("out.gguf", config, tensors, dtype="q8_0",
                     tokenizer_meta=bpe_tokenizer_gguf_meta(tok, chat_template=...))

The rest of the house speaks HF: a config.json dict and a state dict of float32 NumPy arrays named
``model.layers.{i}.self_attn.q_proj.weight`` etc. (Llama and Qwen2). This module translates, once:

* names: ``blk.{i}.attn_q.weight`` <-> ``model.layers.{i}.self_attn.q_proj.weight`` (``_LAYER`` below);
* shapes: GGUF lists a tensor's dims fastest-first (``ne[0]`` is the row length), NumPy slowest-first,
  so a GGUF [in, out] tensor is an HF (out, in) array;
* values: quantized blocks (Q8_0, Q4_1, the K-quants, ...) become float32 through ``gguf.quants``;
* RoPE's pairing: HF's Llama rotates dimension i with i + head_dim/2 (``rotate_half``); llama.cpp
  rotates adjacent pairs (2i, 2i+1). Its converter therefore reorders the rows of q and k within each
  head (``permute_qk``) so that its adjacent pairs are HF's half pairs; we undo that on reading and
  redo it on writing. Only the ``llama`` architecture is reordered (qwen2's converter leaves q/k alone).

Files from strangers: the header is walked with ``tokenizers.gguf_file``'s bounds-checked cursor, and
every tensor's type, shape, offset and size is checked against the file's length before any tensor
is read, so a corrupt file is one ``GGUFError`` naming the problem, never a crash or a huge
allocation. We do not use ``gguf.GGUFReader`` to read: it trusts the header's counts (see
gguf_file.py) and spends 1.7 s turning SmolLM2's tokenizer arrays into NumPy objects, where our
whole read takes 1.1 s; the tests check our tensor table against it. Tensors are dequantized one at a time from a memory
map (peak: the float32 result plus about one tensor's worth of temporaries).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType, RopeScalingType
from gguf import quants

from tinygrad_lm.tokenizers.gguf_file import GGUF_PRE, _Cursor, mapped_gguf, walk_metadata

from .safetensors_file import atomic_write

QT = GGMLQuantizationType


class GGUFError(ValueError):
    """A GGUF file we cannot read: not GGUF, corrupt, truncated, or a model/type we do not support."""


# --- names ----------------------------------------------------------------------------------------
ARCHS = {"llama": ("LlamaForCausalLM", True), "qwen2": ("Qwen2ForCausalLM", False)}  # -> (HF class, q/k permuted)
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
_LAYER = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
          **{f"attn_{x}.{p}": f"self_attn.{x}_proj.{p}" for x in "qkv" for p in ("weight", "bias")},
          "attn_output.weight": "self_attn.o_proj.weight", "attn_output.bias": "self_attn.o_proj.bias",
          **{f"ffn_{x}.{p}": f"mlp.{x}_proj.{p}" for x in ("gate", "up", "down") for p in ("weight", "bias")}}
_LAYER_HF = {v: k for k, v in _LAYER.items()}
_GLOBAL_HF = {v: k for k, v in _GLOBAL.items()}
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency divisors (Llama 3.1's "llama3" rope scaling)


def gguf_to_hf_name(name: str) -> str | None:
    """``blk.3.attn_q.weight`` -> ``model.layers.3.self_attn.q_proj.weight``; None if not a Llama/Qwen2 tensor."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m and m[2] in _LAYER:
        return f"model.layers.{int(m[1])}.{_LAYER[m[2]]}"
    return None


def hf_to_gguf_name(name: str) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``; None if not a Llama/Qwen2 tensor."""
    if name in _GLOBAL_HF:
        return _GLOBAL_HF[name]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", name)
    if m and m[2] in _LAYER_HF:
        return f"blk.{int(m[1])}.{_LAYER_HF[m[2]]}"
    return None


# --- q/k row order ------------------------------------------------------------------------------------
def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a q or k projection (weight (n_head*hd, in) or bias (n_head*hd,)), as
    llama.cpp's convert_hf_to_gguf.py ``permute``: within each head, HF's rows [0..hd/2) and
    [hd/2..hd) (the halves ``rotate_half`` pairs) are interleaved, so HF row i goes to 2i and row
    i + hd/2 to 2i+1, the adjacent pair llama.cpp's RoPE rotates. Pass n_kv_head for k."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot split {rows} rows into {n_head} heads of an even size")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF -> HF row order of a q or k projection: the inverse of ``permute_qk``."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot split {rows} rows into {n_head} heads of an even size")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(head_dim: int, rope_theta: float, rope_scaling: dict) -> np.ndarray:
    """The (head_dim/2,) divisors of RoPE's inverse frequencies for HF's "llama3" rope scaling, as
    llama.cpp's converter stores them in ``rope_freqs.weight``: 1 for short wavelengths, ``factor``
    for long ones, a smooth blend between."""
    factor = float(rope_scaling.get("factor", 8.0))
    low, high = float(rope_scaling.get("low_freq_factor", 1.0)), float(rope_scaling.get("high_freq_factor", 4.0))
    old_ctx = float(rope_scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    out = []
    for wavelen in 2 * math.pi / freqs:
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, np.float32)


# --- reading: the header --------------------------------------------------------------------------------
_MAX_DIMS = 4  # GGML_MAX_DIMS


class _TensorInfo:
    __slots__ = ("name", "qtype", "dims", "start", "nbytes")

    def __init__(self, name, qtype, dims, start, nbytes):
        self.name, self.qtype, self.dims, self.start, self.nbytes = name, qtype, dims, start, nbytes

    @property
    def shape(self) -> tuple[int, ...]:
        """NumPy's (slowest-first) shape: GGUF's dims reversed."""
        return tuple(reversed(self.dims))


def _keep_key(key: str) -> bool:
    # The tokenizer's big arrays (tokens, merges, token types) are skipped, not decoded.
    return not key.startswith("tokenizer.") or key.endswith("_token_id")


def read_gguf_header(path) -> tuple[dict, list[_TensorInfo], str]:
    """(metadata, tensor table, byte order "<" or ">") of a GGUF file, every count, type, size and
    offset checked against the file's length. Metadata holds the model keys (``general.*``,
    ``{arch}.*``) and the tokenizer's token ids, not its vocabulary. GGUFError for any problem."""
    path = Path(path)
    try:
        with mapped_gguf(path) as cur:
            return _walk_header(cur, path, len(cur.buf))
    except GGUFError:
        raise
    except ValueError as e:  # not GGUF; the cursor's "truncated", "unknown type", "not UTF-8" ...
        raise GGUFError(str(e)) from None


def _walk_header(cur: _Cursor, path: Path, size: int):
    meta, n_tensors = walk_metadata(cur, path, _keep_key)   # the key/value pairs; the tensor table comes next
    align = meta.get("general.alignment", 32)
    if type(align) is not int or align <= 0 or align & (align - 1):
        raise GGUFError(f"{path}: corrupt GGUF header: general.alignment {align!r} is not a power of two")

    # Tensor infos: name, n_dims, dims (fastest first), type, offset from the data section's start.
    cur.need(n_tensors * 32, f"{n_tensors} tensor infos")  # name length 8, n_dims 4, a dim 8, type 4, offset 8
    raw = []
    for k in range(n_tensors):
        name = cur.string(f"the name of tensor #{k}")
        n_dims = cur.scalar("I", f"the dimension count of {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFError(f"{path}: corrupt GGUF header: tensor {name!r} has {n_dims} dimensions (1 to {_MAX_DIMS})")
        dims = tuple(cur.scalar("Q", f"the shape of {name!r}") for _ in range(n_dims))
        raw.append((name, dims, cur.scalar("I", f"the type of {name!r}"), cur.scalar("Q", f"the offset of {name!r}")))
    data_start = -(-cur.pos // align) * align

    tensors, names = [], set()
    for name, dims, code, offset in raw:
        if name in names:
            raise GGUFError(f"{path}: corrupt GGUF header: tensor {name!r} appears twice")
        names.add(name)
        try:
            qtype = QT(code)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise GGUFError(f"{path}: tensor {name!r} has unknown GGML type code {code}") from None
        if min(dims) < 1:
            raise GGUFError(f"{path}: corrupt GGUF header: tensor {name!r} has an empty dimension {list(dims)}")
        if dims[0] % block:
            raise GGUFError(f"{path}: corrupt GGUF header: tensor {name!r} ({qtype.name}) has rows of {dims[0]} "
                            f"values, not a multiple of its block size {block}")
        nbytes = math.prod(dims) // block * type_size
        start = data_start + offset
        if offset % align:
            raise GGUFError(f"{path}: corrupt GGUF header: tensor {name!r} starts at offset {offset}, "
                            f"not a multiple of the alignment {align}")
        if start + nbytes > size:
            raise GGUFError(f"{path}: truncated or corrupt GGUF file: tensor {name!r} ({qtype.name}, shape "
                            f"{list(reversed(dims))}) needs bytes {start}..{start + nbytes}, the file has {size}")
        tensors.append(_TensorInfo(name, qtype, dims, start, nbytes))
    return meta, tensors, cur.order


# --- reading: tensors ---------------------------------------------------------------------------------------
_FLOATS = {QT.F32: "f4", QT.F16: "f2", QT.F64: "f8"}
_DEQUANT_OK: dict[QT, bool] = {}


def _can_dequantize(qtype: QT) -> bool:
    """Whether gguf.quants decodes this type (probed once on a zero block: its API has no list)."""
    if qtype in _FLOATS:
        return True
    if qtype not in _DEQUANT_OK:
        _, type_size = GGML_QUANT_SIZES[qtype]
        try:
            quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
            _DEQUANT_OK[qtype] = True
        except (NotImplementedError, ValueError):
            _DEQUANT_OK[qtype] = False
    return _DEQUANT_OK[qtype]


def _load(mm: np.memmap, t: _TensorInfo, order: str) -> np.ndarray:
    """One tensor as a float32 array of NumPy shape, owning its memory (no view of the file)."""
    raw = mm[t.start:t.start + t.nbytes]
    if t.qtype in _FLOATS:
        return raw.view(order + _FLOATS[t.qtype]).reshape(t.shape).astype(np.float32)  # astype copies, native order
    rows = raw.reshape(-1, t.nbytes // math.prod(t.dims[1:]))  # (rows, bytes per row)
    return quants.dequantize(rows, t.qtype).reshape(t.shape)


def _f32(x) -> float:
    """A float stored as float32 (1e-5 reads back as 9.99999974738e-06), as its shortest decimal."""
    return float(str(np.float32(x)))


def _config_from_meta(meta: dict, tensors: dict[str, _TensorInfo], path: Path) -> dict:
    arch = meta.get("general.architecture")
    if arch not in ARCHS:
        raise GGUFError(f"{path}: general.architecture is {arch!r}; supported: {', '.join(ARCHS)}")

    def get(key, kind, default=None):
        v = meta.get(f"{arch}.{key}", default)
        if v is None:
            raise GGUFError(f"{path}: the GGUF metadata lacks {arch}.{key}")
        if kind is int and (type(v) is not int or v <= 0) or kind is float and type(v) not in (int, float):
            raise GGUFError(f"{path}: {arch}.{key} is {v!r}, not a positive {kind.__name__}"
                            + (" (per-layer values are not supported)" if isinstance(v, list) else ""))
        return v

    hidden, heads = get("embedding_length", int), get("attention.head_count", int)
    rope_dim = meta.get(f"{arch}.rope.dimension_count")
    head_dim = get("attention.key_length", int, rope_dim or hidden // heads)
    if rope_dim is not None and rope_dim != head_dim:
        raise GGUFError(f"{path}: RoPE on {rope_dim} of {head_dim} head dimensions (partial rotary) is not supported")
    if "token_embd.weight" not in tensors:
        raise GGUFError(f"{path}: no token_embd.weight tensor")
    vocab = tensors["token_embd.weight"].shape[0]
    cfg = {"architectures": [ARCHS[arch][0]], "model_type": arch, "vocab_size": vocab, "hidden_size": hidden,
           "intermediate_size": get("feed_forward_length", int), "num_hidden_layers": get("block_count", int),
           "num_attention_heads": heads, "num_key_value_heads": get("attention.head_count_kv", int, heads),
           "head_dim": head_dim, "max_position_embeddings": get("context_length", int),
           "rms_norm_eps": _f32(get("attention.layer_norm_rms_epsilon", float)),
           "rope_theta": _f32(get("rope.freq_base", float, 10000.0)), "hidden_act": "silu",
           "tie_word_embeddings": "output.weight" not in tensors,
           "attention_bias": "blk.0.attn_q.bias" in tensors, "mlp_bias": "blk.0.ffn_up.bias" in tensors}
    for name in ("bos", "eos"):
        i = meta.get(f"tokenizer.ggml.{name}_token_id")
        if type(i) is int and 0 <= i < vocab:
            cfg[f"{name}_token_id"] = i
    scaling = _rope_scaling_from_meta(meta, arch, path)
    if scaling:
        cfg["rope_scaling"] = scaling
    return cfg


def _rope_scaling_from_meta(meta: dict, arch: str, path: Path) -> dict | None:
    kind = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
    if kind is None and factor is not None:
        kind = "linear"  # older files: rope.scale_linear alone
    if kind in (None, "none"):
        return None
    if kind not in ("linear", "yarn") or type(factor) not in (int, float):
        raise GGUFError(f"{path}: rope scaling {kind!r} with factor {factor!r} is not supported (linear, yarn)")
    out = {"rope_type": kind, "factor": _f32(factor)}
    orig = meta.get(f"{arch}.rope.scaling.original_context_length")
    if kind == "yarn" and orig is not None:
        out["original_max_position_embeddings"] = orig
    return out


def _expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """The HF tensors a config implies and their (out, in) shapes (biases as the config says)."""
    C, V, F = cfg["hidden_size"], cfg["vocab_size"], cfg["intermediate_size"]
    hd, nh, nkv = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    shapes = {"model.embed_tokens.weight": (V, C)}  # in llama.cpp's order: embeddings, blocks, norm, head
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        layer = {"input_layernorm.weight": (C,), "post_attention_layernorm.weight": (C,),
                 "self_attn.q_proj.weight": (nh * hd, C), "self_attn.k_proj.weight": (nkv * hd, C),
                 "self_attn.v_proj.weight": (nkv * hd, C), "self_attn.o_proj.weight": (C, nh * hd),
                 "mlp.gate_proj.weight": (F, C), "mlp.up_proj.weight": (F, C), "mlp.down_proj.weight": (C, F)}
        if cfg["attention_bias"]:
            layer.update({"self_attn.q_proj.bias": (nh * hd,), "self_attn.k_proj.bias": (nkv * hd,),
                          "self_attn.v_proj.bias": (nkv * hd,)})
        if cfg["model_type"] == "llama" and cfg["attention_bias"]:
            layer["self_attn.o_proj.bias"] = (C,)
        if cfg["mlp_bias"]:
            layer.update({"mlp.gate_proj.bias": (F,), "mlp.up_proj.bias": (F,), "mlp.down_proj.bias": (C,)})
        shapes.update({p + k: v for k, v in layer.items()})
    shapes["model.norm.weight"] = (C,)
    if not cfg["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def read_gguf_model(path, weights: bool = True) -> tuple[dict, dict[str, np.ndarray], dict]:
    """A Llama or Qwen2 GGUF file as ``(hf_config, tensors, info)``.

    ``hf_config``: the config.json dict HF would write (architectures, model_type, sizes, rope_theta,
    rms_norm_eps, tie_word_embeddings, attention_bias, mlp_bias, bos/eos token ids when the file has
    them, rope_scaling for linear/yarn). A Llama 3.1-style file's ``rope_freqs.weight`` comes back as
    ``hf_config["rope_freqs"]`` (head_dim/2 divisors of RoPE's inverse frequencies): HF's "llama3"
    parameters cannot be recovered from them exactly.
    ``tensors``: HF name -> float32 array of HF shape (out, in), q/k rows in HF's rotate_half order.
    ``info``: ``architecture``, ``name`` (general.name), ``file_type`` (general.file_type and its
    name), ``tensor_types`` (HF name -> GGUF type name, e.g. "Q4_1").

    weights=False: the header, config and info only (``tensors`` is empty), checked the same way.
    FileNotFoundError if missing; GGUFError (a ValueError) naming the file and the problem for a
    corrupt or truncated file, another architecture, a tensor type gguf.quants cannot decode, or
    tensors that disagree with the config."""
    path = Path(path)
    meta, table, order = read_gguf_header(path)
    by_name = {t.name: t for t in table}
    cfg = _config_from_meta(meta, by_name, path)
    arch = cfg["model_type"]

    expected = _expected_shapes(cfg)
    hf_names = {}
    for t in table:
        if t.name == ROPE_FREQS:
            continue
        hf = gguf_to_hf_name(t.name)
        if hf is None or hf not in expected:
            raise GGUFError(f"{path}: tensor {t.name!r} is not part of a {arch} model with this config")
        if t.shape != expected[hf]:
            raise GGUFError(f"{path}: tensor {t.name!r} has shape {list(t.shape)}; the config implies "
                            f"{list(expected[hf])} for {hf}")
        hf_names[t.name] = hf
    missing = sorted(set(expected) - set(hf_names.values()))
    if missing:
        raise GGUFError(f"{path}: missing tensors for a {arch} model: {', '.join(map(hf_to_gguf_name, missing[:5]))}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    for t in table:
        if not _can_dequantize(t.qtype):
            raise GGUFError(f"{path}: tensor {t.name!r} has type {t.qtype.name}, which gguf.quants cannot decode")
        if order == ">" and t.qtype not in _FLOATS:
            raise GGUFError(f"{path}: tensor {t.name!r} is {t.qtype.name} in a big-endian file; only float "
                            "tensors are read from big-endian files")
    if ROPE_FREQS in by_name and by_name[ROPE_FREQS].shape != (cfg["head_dim"] // 2,):
        raise GGUFError(f"{path}: {ROPE_FREQS} has shape {list(by_name[ROPE_FREQS].shape)}, "
                        f"expected [{cfg['head_dim'] // 2}]")

    mm = np.memmap(path, dtype=np.uint8, mode="r")
    try:
        tensors = {}
        for t in table if weights else [by_name[n] for n in (ROPE_FREQS,) if n in by_name]:
            w = _load(mm, t, order)
            if t.name == ROPE_FREQS:
                cfg["rope_freqs"] = [float(x) for x in w]
                continue
            hf = hf_names[t.name]
            if ARCHS[arch][1] and (".q_proj." in hf or ".k_proj." in hf):
                w = unpermute_qk(w, cfg["num_attention_heads"] if ".q_proj." in hf else cfg["num_key_value_heads"])
            tensors[hf] = w
    finally:
        del mm
    ftype = meta.get("general.file_type")
    try:
        ftype_name = LlamaFileType(ftype).name
    except ValueError:
        ftype_name = None
    info = {"architecture": arch, "name": meta.get("general.name"), "file_type": ftype, "file_type_name": ftype_name,
            "tensor_types": {hf_names.get(t.name, t.name): t.qtype.name for t in table}}
    return cfg, tensors, info


# --- writing --------------------------------------------------------------------------------------------------
_DTYPES = {"f32": (QT.F32, LlamaFileType.ALL_F32), "f16": (QT.F16, LlamaFileType.MOSTLY_F16),
           "q8_0": (QT.Q8_0, LlamaFileType.MOSTLY_Q8_0)}
VT = GGUFValueType
# The tokenizer keys llama.cpp reads, with the types its converter writes them in.
TOKENIZER_KEY_TYPES = {
    "tokenizer.ggml.model": (VT.STRING, None), "tokenizer.ggml.pre": (VT.STRING, None),
    "tokenizer.ggml.tokens": (VT.ARRAY, VT.STRING), "tokenizer.ggml.token_type": (VT.ARRAY, VT.INT32),
    "tokenizer.ggml.merges": (VT.ARRAY, VT.STRING), "tokenizer.ggml.scores": (VT.ARRAY, VT.FLOAT32),
    **{f"tokenizer.ggml.{k}_token_id": (VT.UINT32, None)
       for k in ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask")},
    **{f"tokenizer.ggml.{k}": (VT.BOOL, None) for k in ("add_bos_token", "add_eos_token", "add_space_prefix")},
    "tokenizer.chat_template": (VT.STRING, None),
}


def _value_type(v) -> GGUFValueType | None:
    """The GGUF type a plain Python value is stored as (None for anything else)."""
    if isinstance(v, bool):
        return VT.BOOL
    if isinstance(v, int):
        return VT.INT32 if -2**31 <= v < 2**31 else VT.INT64
    return {float: VT.FLOAT32, str: VT.STRING}.get(type(v))


def _fits(v, vtype: GGUFValueType) -> bool:
    if vtype == VT.UINT32:
        return type(v) is int and 0 <= v < 2**32
    if vtype == VT.FLOAT32:
        return type(v) in (int, float)
    return _value_type(v) == vtype or vtype == VT.INT64 and _value_type(v) == VT.INT32


def _tokenizer_kv(meta: dict) -> list[tuple[str, object, GGUFValueType, GGUFValueType | None]]:
    """(key, value, type, element type) per tokenizer key, each value checked against the type llama.cpp
    reads it as (TOKENIZER_KEY_TYPES; other keys by their Python type); ValueError naming a bad one."""
    out = []
    for key, v in meta.items():
        if not isinstance(key, str) or not key.startswith("tokenizer."):
            raise ValueError(f"tokenizer_meta key {key!r} does not start with 'tokenizer.'")
        is_list = isinstance(v, (list, tuple))
        if is_list and not v:
            raise ValueError(f"tokenizer_meta[{key!r}] is empty; GGUF arrays cannot be")
        first = v[0] if is_list else v
        guess = (VT.ARRAY, _value_type(first)) if is_list else (_value_type(first), None)
        vtype, sub = TOKENIZER_KEY_TYPES.get(key, guess)
        ok = vtype == VT.ARRAY and is_list and sub is not None and all(_fits(x, sub) for x in v) \
            or vtype != VT.ARRAY and not is_list and vtype is not None and _fits(v, vtype)
        if not ok:
            want = f"a list of {sub.name}" if vtype == VT.ARRAY and sub else vtype.name if vtype else "a plain value"
            raise ValueError(f"tokenizer_meta[{key!r}] = {str(v)[:60]} is not {want}")
        out.append((key, list(v) if is_list else v, vtype, sub))
    return out


def _config_for_writing(hf_config: dict, tensors: dict) -> dict:
    """The config's sizes, defaults filled as HF fills them; ValueError naming what is missing or wrong."""
    arch = hf_config.get("model_type", "llama")
    if arch not in ARCHS:
        raise ValueError(f"model_type {arch!r}: GGUF writing supports {', '.join(ARCHS)}")
    try:
        cfg = {k: int(hf_config[k]) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                              "num_attention_heads", "max_position_embeddings")}
        cfg["rms_norm_eps"] = float(hf_config["rms_norm_eps"])
    except KeyError as e:
        raise ValueError(f"hf_config lacks {e.args[0]!r}") from None
    emb = tensors.get("model.embed_tokens.weight")
    if emb is None:
        raise ValueError("tensors lack model.embed_tokens.weight")
    params = hf_config.get("rope_parameters") or {}  # transformers 5 keeps rope_theta and scaling here
    scaling = hf_config.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    cfg.update(model_type=arch, vocab_size=int(hf_config.get("vocab_size", emb.shape[0])),
               num_key_value_heads=int(hf_config.get("num_key_value_heads") or cfg["num_attention_heads"]),
               head_dim=int(hf_config.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]),
               rope_theta=float(hf_config.get("rope_theta", params.get("rope_theta", 10000.0))),
               tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", "lm_head.weight" not in tensors)),
               attention_bias=bool(hf_config.get("attention_bias", arch == "qwen2")),
               mlp_bias=bool(hf_config.get("mlp_bias", False)), rope_scaling=scaling,
               rope_freqs=hf_config.get("rope_freqs"))
    return cfg


def _plan(cfg: dict, tensors: dict, dtype: str) -> list[tuple[str, str, QT, tuple[int, ...]]]:
    """(HF name, GGUF name, GGUF type, shape) per tensor to write; ValueError for a missing, unknown or
    misshapen tensor. 1-D tensors stay F32 (as llama.cpp writes norms and biases); with q8_0 a tensor
    whose rows are not a multiple of 32 values is written F16 (as llama.cpp's converter falls back)."""
    expected = _expected_shapes(cfg)
    unknown = sorted(set(tensors) - set(expected) - ({"lm_head.weight"} if cfg["tie_word_embeddings"] else set()))
    if unknown:
        raise ValueError(f"tensors not part of this {cfg['model_type']} config: {', '.join(unknown[:5])}")
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise ValueError(f"tensors missing for this config: {', '.join(missing[:5])}"
                         + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    want, _ = _DTYPES[dtype]
    plan = []
    for hf, shape in expected.items():  # lm_head is skipped when tied: GGUF's tied models have no output.weight
        got = tuple(np.shape(tensors[hf]))
        if got != shape:
            raise ValueError(f"{hf} has shape {list(got)}; the config implies {list(shape)}")
        qtype = QT.F32 if len(shape) == 1 else want
        if qtype == QT.Q8_0 and shape[-1] % GGML_QUANT_SIZES[QT.Q8_0][0]:
            qtype = QT.F16
        plan.append((hf, hf_to_gguf_name(hf), qtype, shape))
    return plan


def _add_model_keys(w: GGUFWriter, cfg: dict, name: str, file_type: int) -> None:
    w.add_name(name)
    w.add_file_type(file_type)
    if file_type != LlamaFileType.ALL_F32:
        w.add_quantization_version(2)  # GGML_QNT_VERSION, as llama.cpp writes it
    w.add_vocab_size(cfg["vocab_size"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_dimension_count(cfg["head_dim"])
    if cfg["head_dim"] != cfg["hidden_size"] // cfg["num_attention_heads"]:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])


def _rope_freqs_for_writing(cfg: dict, w: GGUFWriter) -> np.ndarray | None:
    """Write the rope scaling keys; return the rope_freqs tensor llama3 scaling needs (or None)."""
    scaling, freqs = cfg["rope_scaling"], cfg["rope_freqs"]
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type"))
    if kind in ("linear", "yarn"):
        w.add_rope_scaling_type(RopeScalingType(kind))
        w.add_rope_scaling_factor(float(scaling["factor"]))
        if kind == "yarn" and "original_max_position_embeddings" in scaling:
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif kind == "llama3" and freqs is None:
        freqs = llama3_rope_factors(cfg["head_dim"], cfg["rope_theta"], scaling)
    elif kind not in (None, "default", "llama3"):
        raise ValueError(f"rope scaling {kind!r} cannot be written to GGUF here (linear, yarn, llama3)")
    if freqs is None:
        return None
    freqs = np.asarray(freqs, np.float32)
    if freqs.shape != (cfg["head_dim"] // 2,):
        raise ValueError(f"rope_freqs has shape {list(freqs.shape)}, expected [{cfg['head_dim'] // 2}]")
    return freqs


def _convert(w: np.ndarray, qtype: QT, hf: str) -> np.ndarray:
    w = np.ascontiguousarray(w, dtype=np.float32)
    if qtype == QT.F32:
        return w
    if qtype == QT.F16:
        with np.errstate(over="ignore"):  # reported below, with the tensor's name
            h = w.astype(np.float16)
        if not np.isfinite(h).all() and np.isfinite(w).all():
            raise ValueError(f"{hf} has values beyond float16's range (max |x| {np.abs(w).max():.4g}); write f32")
        return h
    return quants.quantize(w, qtype)


def write_gguf_model(path, hf_config: dict, tensors: dict, dtype: str = "f32",
                     tokenizer_meta: dict | None = None) -> dict[str, str]:
    """Write an HF-named Llama (or Qwen2) model as a GGUF file llama.cpp and transformers load.

    ``dtype``: "f32", "f16" or "q8_0" for the 2-D tensors; 1-D ones (norms, biases) stay F32, and a
    q8_0 tensor whose rows are not a multiple of 32 values is written F16 (llama.cpp does the same).
    q/k rows are put in llama.cpp's adjacent-pair order for the llama architecture. A tied model
    (``tie_word_embeddings``) gets no output.weight. ``tokenizer_meta``: GGUF tokenizer keys ready to
    store (see ``bpe_tokenizer_gguf_meta``). The file appears whole or not at all
    (``safetensors_file.atomic_write``). Returns GGUF tensor name -> type written ("Q8_0", ...).
    ValueError for an unsupported config, missing/unknown/misshapen tensors or bad tokenizer keys."""
    path = Path(path)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    cfg = _config_for_writing(hf_config, tensors)
    plan = _plan(cfg, tensors, dtype)
    tok_kv = _tokenizer_kv(tokenizer_meta or {})
    n_tokens = len((tokenizer_meta or {}).get("tokenizer.ggml.tokens") or [])
    if n_tokens and n_tokens != cfg["vocab_size"]:
        raise ValueError(f"the tokenizer has {n_tokens} tokens, the model {cfg['vocab_size']}; llama.cpp needs one "
                         "entry per embedding row (bpe_tokenizer_gguf_meta(..., vocab_size=) pads)")
    arch, permuted = cfg["model_type"], ARCHS[cfg["model_type"]][1]
    writer = GGUFWriter(None, arch)
    _add_model_keys(writer, cfg, str(hf_config.get("_name_or_path") or path.stem), _DTYPES[dtype][1])
    rope_freqs = _rope_freqs_for_writing(cfg, writer)
    for key, v, vtype, sub in tok_kv:
        writer.add_key_value(key, v, vtype, sub_type=sub)
    if rope_freqs is not None:
        writer.add_tensor_info(ROPE_FREQS, rope_freqs.shape, np.float32, rope_freqs.nbytes)
    for _, name, qtype, shape in plan:
        block, type_size = GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(name, shape, np.float32, math.prod(shape) // block * type_size, raw_dtype=qtype)

    def write(tmp: Path) -> None:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            if rope_freqs is not None:
                writer.write_tensor_data(rope_freqs)
            for hf, _, qtype, _ in plan:  # one tensor converted at a time: memory stays about one tensor
                w = np.asarray(tensors[hf], dtype=np.float32)
                if permuted and (".q_proj." in hf or ".k_proj." in hf):
                    w = permute_qk(w, cfg["num_attention_heads"] if ".q_proj." in hf else cfg["num_key_value_heads"])
                writer.write_tensor_data(_convert(w, qtype, hf))
        finally:
            writer.close()

    atomic_write(path, write)  # a temp file next to path, renamed over it when whole; removed on error
    return {name: qtype.name for _, name, qtype, _ in plan} | ({ROPE_FREQS: "F32"} if rope_freqs is not None else {})


# --- tokenizer ----------------------------------------------------------------------------------------------
CONTROL, UNUSED = 3, 5  # llama.cpp token types (NORMAL is 1)


def _gguf_pre_name(tok) -> str:
    """llama.cpp's tokenizer.ggml.pre name for our pattern (the inverse of gguf_file.GGUF_PRE)."""
    from tinygrad_lm.tokenizers.patterns import resolve_pattern
    for pre, ours in GGUF_PRE.items():
        if resolve_pattern(ours)[0] == tok.pattern:
            return pre
    named = tok.pattern_name or f"regex {tok.pattern!r:.60}"
    raise ValueError(f"pre-tokenizer {named} has no llama.cpp name a GGUF file can carry; GGUF can hold "
                     "the patterns 'gpt2', 'smollm' (or 'digits'), and Llama 3's and Qwen2's regexes (gpt4 is "
                     "close to Llama 3's but not identical)")


def bpe_tokenizer_gguf_meta(tok, chat_template: str | None = None, bos=None, eos=None,
                            vocab_size: int | None = None) -> dict:
    """GGUF tokenizer keys for our byte-level ``BPETokenizer``, ready for ``write_gguf_model``:
    tokens in GPT-2's byte-to-unicode spelling (index = id, type 1 normal, 3 for special tokens),
    merges as "a b", llama.cpp's pre-tokenizer name, ``add_bos_token`` False (our encode adds none).
    ``bos``/``eos``: a token id or a special token's text. ``vocab_size``: pad the list to the
    model's embedding rows with unused "[PAD{id}]" entries, as llama.cpp's converter does.
    ValueError for a pattern GGUF cannot name or ids with holes."""
    from tinygrad_lm.tokenizers.formats import spell
    n = tok.vocab_size
    tokens, types = [None] * n, [1] * n
    for b, i in tok.vocab.items():
        tokens[i] = spell(b)
    for s, i in tok.special_tokens.items():
        tokens[i], types[i] = s, CONTROL
    holes = [i for i, t in enumerate(tokens) if t is None]
    if holes:
        raise ValueError(f"token ids {holes[:5]} have no token; GGUF lists one token per id")
    if vocab_size is not None:
        if vocab_size < n:
            raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {n} tokens")
        tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
        types += [UNUSED] * (vocab_size - n)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": _gguf_pre_name(tok),
            "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.merges": [f"{spell(a)} {spell(b)}" for a, b in tok.merges],
            "tokenizer.ggml.add_bos_token": False}
    for key, v in (("bos", bos), ("eos", eos)):
        if v is not None:
            i = tok.token_id(v) if isinstance(v, str) else v
            if type(i) is not int or not 0 <= i < len(tokens):
                raise ValueError(f"{key} {v!r} is not a token id of this tokenizer")
            meta[f"tokenizer.ggml.{key}_token_id"] = i
    if chat_template:
        meta["tokenizer.chat_template"] = chat_template
    return meta
