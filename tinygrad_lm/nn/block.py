"""The feed-forward network and the pre-norm residual transformer block."""
from __future__ import annotations

from .. import functional as F
from .attention import CausalSelfAttention
from .hooks import HookPoint
from .layers import Dropout, LayerNorm, Linear, RMSNorm
from .module import Module

MLP_KINDS = ("gelu", "gelu_tanh", "swiglu")


def swiglu_hidden(n_embd: int) -> int:
    """LLaMA's hidden size: 2/3 of 4*n_embd (same parameter count as a GELU MLP), rounded up to 8."""
    return -(-int(8 * n_embd / 3) // 8) * 8


class MLP(Module):
    """Position-wise feed-forward: c_fc -> activation -> c_proj (GPT-2 names).

    "gelu" (exact erf) and "gelu_tanh" use 4*n_embd hidden units by default; "swiglu" computes
    silu(gate) * up with gate and up stacked in c_fc (gate first)."""

    def __init__(self, n_embd: int, kind: str = "gelu", bias: bool = True, dropout: float = 0.0,
                 hidden: int | None = None):
        super().__init__()
        if kind not in MLP_KINDS:
            raise ValueError(f"MLP kind must be one of {MLP_KINDS}, got {kind!r}")
        self.kind = kind
        if hidden is None:  # real checkpoints set it (SmolLM2: 1536 for 576 wide)
            hidden = swiglu_hidden(n_embd) if kind == "swiglu" else 4 * n_embd
        self.c_fc = Linear(n_embd, 2 * hidden if kind == "swiglu" else hidden, bias=bias)
        self.c_proj = Linear(hidden, n_embd, bias=bias)
        self.dropout = Dropout(dropout)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()   # tinygrad_lm.lens: before and after the activation

    def forward(self, x):
        h = self.hook_pre(self.c_fc(x))                                  # (B, T, hidden or 2*hidden)
        if self.kind == "swiglu":
            h = F.swiglu(h)                                              # silu(gate) * up: (B, T, hidden)
        else:
            h = F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.dropout(self.c_proj(self.hook_post(h)))

    def extra_repr(self):
        return f"kind={self.kind!r}"


def make_norm(kind: str, dim: int, bias: bool, eps: float | None = None):
    """LayerNorm (eps 1e-5 by default) or RMSNorm (eps 1e-6 by default)."""
    if kind == "layernorm":
        return LayerNorm(dim, bias=bias) if eps is None else LayerNorm(dim, bias=bias, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim) if eps is None else RMSNorm(dim, eps=eps)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class Block(Module):
    """x + attn(norm(x)), then x + mlp(norm(x)): the pre-norm residual block of GPT-2."""

    def __init__(self, n_embd: int, n_head: int, n_kv_head: int | None = None, bias: bool = True,
                 dropout: float = 0.0, norm: str = "layernorm", mlp: str = "gelu", rope=None, *,
                 head_dim: int | None = None, qkv_bias: bool | None = None, mlp_hidden: int | None = None,
                 norm_eps: float | None = None):
        super().__init__()
        self.ln_1 = make_norm(norm, n_embd, bias, norm_eps)
        self.attn = CausalSelfAttention(n_embd, n_head, n_kv_head, bias=bias, dropout=dropout, rope=rope,
                                        head_dim=head_dim, qkv_bias=qkv_bias)
        self.ln_2 = make_norm(norm, n_embd, bias, norm_eps)
        self.mlp = MLP(n_embd, mlp, bias=bias, dropout=dropout, hidden=mlp_hidden)
        # tinygrad_lm.lens hook points on the residual stream and on what each sub-layer adds to it
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x, start: int = 0, cache=None, layer: int = 0, mask=None, positions=None):
        x = self.hook_resid_pre(x)                                       # (B, T, C)
        attn_out = self.attn(self.ln_1(x), start=start, cache=cache, layer=layer, mask=mask, positions=positions)
        x = self.hook_resid_mid(x + self.hook_attn_out(attn_out))
        x = x + self.hook_mlp_out(self.mlp(self.ln_2(x)))
        return self.hook_resid_post(x)

