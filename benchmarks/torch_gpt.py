"""The PyTorch peer: a minimal nanoGPT-equivalent GPT-2 model, loaded with a tinygrad_lm GPT's weights.

Only the benchmarks use it, and only when PyTorch is installed (``pip install
'tinygrad_lm[bench]'``); import it through :func:`torch_or_none` so a missing torch gives a
note, not a traceback. The architecture is GPT-2 as tinygrad_lm's defaults build it: learned
positions, LayerNorm with bias, exact (erf) GELU, tied lm_head, causal attention through
``F.scaled_dot_product_attention(is_causal=True)``; the module names, and so the state_dict
keys, are the nanoGPT/GPT-2 ones tinygrad_lm uses, so :func:`from_tinygrad` copies weights by name.

Generation: :meth:`GPT.generate` decodes like ``tinygrad_lm.models.GPT._decode`` (a KV cache
of ``block_size`` positions; when the window is full the oldest quarter is dropped and the rest
re-read), or, with ``use_cache=False``, recomputes the window every step like nanoGPT's generate.
"""
from __future__ import annotations

import numpy as np


def torch_or_none():
    """(torch module, None) when PyTorch imports, else (None, a one-line note saying why)."""
    try:
        import torch
    except ImportError as e:  # the optional peer is missing: benchmarks show tinygrad_lm columns only
        return None, f"PyTorch is not installed ({e}); install the optional peer with " \
                     f"pip install 'tinygrad_lm[bench]' to get the PyTorch columns"
    return torch, None


torch, _ = torch_or_none()
if torch is not None:
    import torch.nn as nn
    import torch.nn.functional as F

    class LayerNorm(nn.Module):
        def __init__(self, n: int, bias: bool = True):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))
            self.bias = nn.Parameter(torch.zeros(n)) if bias else None

        def forward(self, x):
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)

    class CausalSelfAttention(nn.Module):
        def __init__(self, n_embd: int, n_head: int, bias: bool = True):
            super().__init__()
            self.n_head = n_head
            self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
            self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)

        def forward(self, x, cache=None, layer: int = 0):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            if cache is not None:
                k, v = cache.update(layer, k, v)                                  # (B, nh, pos+T, hs)
            if k.shape[2] == T:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif T == 1:  # one new token sees every cached key: no mask
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # a chunk after cached tokens: causal, aligned bottom-right
                mask = torch.ones(T, k.shape[2], dtype=torch.bool).tril(k.shape[2] - T)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            y = y.transpose(1, 2).contiguous().view(B, T, C)                      # (B, T, C)
            return self.c_proj(y)

    class MLP(nn.Module):
        def __init__(self, n_embd: int, bias: bool = True):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
            self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x)))                             # exact erf GELU

    class Block(nn.Module):
        def __init__(self, n_embd: int, n_head: int, bias: bool = True):
            super().__init__()
            self.ln_1 = LayerNorm(n_embd, bias)
            self.attn = CausalSelfAttention(n_embd, n_head, bias)
            self.ln_2 = LayerNorm(n_embd, bias)
            self.mlp = MLP(n_embd, bias)

        def forward(self, x, cache=None, layer: int = 0):
            x = x + self.attn(self.ln_1(x), cache, layer)
            return x + self.mlp(self.ln_2(x))

    class KVCache:
        """Keys and values per layer, (B, nh, block_size, hs) buffers filled up to ``pos``."""

        def __init__(self, n_layer, batch, n_head, max_len, head_dim, dtype=torch.float32):
            self.keys = [torch.zeros(batch, n_head, max_len, head_dim, dtype=dtype) for _ in range(n_layer)]
            self.values = [torch.zeros(batch, n_head, max_len, head_dim, dtype=dtype) for _ in range(n_layer)]
            self.pos = 0

        def update(self, layer, k, v):
            end = self.pos + k.shape[2]
            self.keys[layer][:, :, self.pos:end] = k
            self.values[layer][:, :, self.pos:end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    class GPT(nn.Module):
        """nanoGPT's GPT (dropout 0) with tinygrad_lm's GPTConfig fields."""

        def __init__(self, config):
            super().__init__()
            c = self.config = config
            if (c.pos, c.norm, c.mlp, c.n_kv_head, c.tie_weights) != ("learned", "layernorm", "gelu", c.n_head, True):
                raise ValueError("torch_gpt.GPT builds GPT-2 only: learned positions, layernorm, exact gelu, "
                                 "no grouped-query attention, tied weights")
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(c.vocab_size, c.n_embd),
                wpe=nn.Embedding(c.block_size, c.n_embd),
                h=nn.ModuleList(Block(c.n_embd, c.n_head, c.bias) for _ in range(c.n_layer)),
                ln_f=LayerNorm(c.n_embd, c.bias),
            ))
            self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
            self.transformer.wte.weight = self.lm_head.weight                   # tied, as nanoGPT does

        def forward(self, idx, targets=None, cache=None):
            B, T = idx.shape
            start = cache.pos if cache is not None else 0
            pos = torch.arange(start, start + T, dtype=torch.long)
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)           # (B, T, C)
            for i, block in enumerate(self.transformer.h):
                x = block(x, cache, i)
            if cache is not None:
                cache.pos += T
            x = self.transformer.ln_f(x)
            if targets is not None:
                logits = self.lm_head(x)                                         # (B, T, V)
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
                return logits, loss
            return self.lm_head(x[:, [-1], :]), None                             # (B, 1, V)

        def configure_optimizers(self, weight_decay, learning_rate, betas=(0.9, 0.95), eps=1e-8):
            """torch.optim.AdamW with tinygrad_lm's grouping (decay matrices, not biases/norms).

            foreach is left at PyTorch's default (for CPU tensors that is the per-parameter loop)."""
            params = [p for p in self.parameters() if p.requires_grad]
            groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
            return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps)

        def new_cache(self, batch):
            c = self.config
            return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head,
                           self.lm_head.weight.dtype)

        @torch.no_grad()
        def generate(self, idx, max_new_tokens: int, use_cache: bool = True):
            """Greedy continuation of idx (B, T) -> (B, T + max_new_tokens), with tinygrad_lm's window policy."""
            block = self.config.block_size
            keep = max(1, block - block // 4)
            seq = idx
            win = max(0, seq.shape[1] - block)
            cache = None
            for _ in range(max_new_tokens):
                full = seq.shape[1] - win > block
                if full:
                    win = seq.shape[1] - keep
                if use_cache:
                    if cache is None or full:
                        cache = self.new_cache(seq.shape[0])                     # prefill the window
                        logits, _ = self(seq[:, win:], cache=cache)
                    else:
                        logits, _ = self(seq[:, -1:], cache=cache)               # one new token
                else:
                    logits, _ = self(seq[:, win:])
                nxt = logits[:, -1, :].argmax(dim=-1, keepdim=True)
                seq = torch.cat([seq, nxt], dim=1)
            return seq


def from_tinygrad(model):
    """A torch_gpt.GPT with the same config and the same weights (copied by state_dict name)."""
    return from_state_dict(model.config, model.state_dict())


def from_state_dict(config, arrays: dict):
    """A torch_gpt.GPT of ``config`` (tinygrad_lm's GPTConfig, or any object with its fields)
    holding ``arrays`` (state_dict name -> NumPy array, e.g. a tinygrad_lm GPT's state_dict)."""
    if torch is None:
        raise RuntimeError(torch_or_none()[1])
    peer = GPT(config)
    theirs = peer.state_dict()
    if set(arrays) != set(theirs):
        raise ValueError(f"state_dict names differ: only tinygrad_lm {sorted(set(arrays) - set(theirs))}, "
                         f"only torch {sorted(set(theirs) - set(arrays))}")
    with torch.no_grad():
        for name, value in arrays.items():
            if tuple(theirs[name].shape) != value.shape:
                raise ValueError(f"{name}: shape {value.shape} here, {tuple(theirs[name].shape)} in torch")
            theirs[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))  # tied weights are copied twice (same value)
    return peer


def check_same_loss(model, peer, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Loss of both models on one batch, in eval mode and without recording a graph."""
    from tinygrad_lm import no_grad
    with no_grad():
        _, ours = model(x, y)
    with torch.no_grad():
        _, theirs = peer(torch.from_numpy(x), torch.from_numpy(y))
    return float(ours.data), float(theirs)


def describe_threads() -> dict:
    """Torch's thread settings (empty without torch)."""
    if torch is None:
        return {}
    return {"torch_num_threads": torch.get_num_threads(), "torch_num_interop_threads": torch.get_num_interop_threads(),
            "torch_version": torch.__version__, "torch_blas": _torch_blas()}


def _torch_blas() -> str:
    cfg = torch.__config__.show()
    for name in ("MKL", "OpenBLAS"):
        if f"BLAS_INFO={name.lower()}" in cfg or f"USE_{name.upper()}=ON" in cfg:
            return name
    return "unknown"

