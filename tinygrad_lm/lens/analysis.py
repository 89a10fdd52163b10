"""What the lens computes from a model's activations: the logit lens, direct logit attribution, the
top-k next tokens and the loss at every position, and the effect on the loss of ablating a head.

Every function takes the model (a GPT or a PeftModel) and token ids (B, T) (or (T,)), runs it in
eval mode without a graph (the model's mode is put back afterwards), and returns NumPy arrays."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np

from .. import backend
from ..nn import CausalSelfAttention, RMSNorm
from ..tensor import Tensor, host_array, no_grad
from .hooks import as_gpt, run_with_cache, run_with_hooks


@contextlib.contextmanager
def inference(model):
    """Eval mode (no dropout) and no graph for the block; the model's train mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            yield
    finally:
        if was_training:
            model.train()


def token_ids(idx) -> np.ndarray:
    """Token ids as a (B, T) int64 host array; a single sequence (T,) becomes (1, T)."""
    ids = host_array(idx)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"token ids must be a (B, T) or (T,) integer array, got shape {ids.shape} dtype {ids.dtype}")
    return ids.astype(np.int64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities along the last axis, in float64 (small ones stay distinguishable)."""
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def top_k(logits: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """logits (..., V) -> (token ids (..., k), probabilities (..., k)), most likely first."""
    probs = softmax(logits)
    k = min(int(k), probs.shape[-1])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    best = np.argpartition(-probs, k - 1, axis=-1)[..., :k]               # the k largest, unordered
    p = np.take_along_axis(probs, best, axis=-1)
    order = np.argsort(-p, axis=-1, kind="stable")
    return np.take_along_axis(best, order, axis=-1), np.take_along_axis(p, order, axis=-1)


# ---- reading the residual stream -------------------------------------------------------------------

def residual_names(n_layer: int) -> list[str]:
    """The residual stream before block 0 (the embeddings) and after each block: n_layer + 1 names."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layer)]


def unembed(model, resid: np.ndarray) -> np.ndarray:
    """A residual-stream activation (B, P + T, C) -> logits (B, T, V) through the model's own final
    norm and output layer, as forward does with the last block's output (P: soft-prompt tokens, dropped)."""
    gpt = as_gpt(model)
    x = Tensor(resid, device=gpt.transformer.wte.weight.device)
    P = gpt.num_virtual_tokens
    if P:
        x = x[:, P:]
    with no_grad():
        return host_array(gpt.lm_head(gpt.transformer.ln_f(x)))


def logit_lens(model, idx, layers=None, cache=None) -> np.ndarray:
    """The logit lens: -> logits (len(layers), B, T, V), row i reading residual_names(n_layer)[layers[i]]
    (0: the embeddings, l + 1: the output of block l; default all n_layer + 1) through the model's
    final norm and output layer. The last block's row is the model's own logits, exactly.
    Memory: len(layers) * B * T * V float32 values; ask for a few layers on a large vocabulary.
    cache: an ActivationCache that already holds the residuals (else the model runs once)."""
    gpt = as_gpt(model)
    names = residual_names(gpt.config.n_layer)
    rows = range(len(names)) if layers is None else [int(i) for i in layers]
    for i in rows:
        if not 0 <= i < len(names):
            raise ValueError(f"logit_lens: layer {i} is outside 0 .. {len(names) - 1} (0 = the embeddings, "
                             f"l + 1 = after block l)")
    wanted = [names[i] for i in rows]
    with inference(model):
        if cache is None or any(n not in cache for n in wanted):
            _, cache = run_with_cache(model, token_ids(idx), wanted)
        return np.stack([unembed(gpt, cache[n]) for n in wanted])


# ---- per position --------------------------------------------------------------------------------

def all_logits(model, idx) -> np.ndarray:
    """The model's logits at every position, (B, T, V)."""
    with inference(model):
        logits, _ = model(token_ids(idx), all_logits=True)
    return host_array(logits)


def top_k_next_tokens(model, idx, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """At every position, the k likeliest next tokens: (ids (B, T, k), probabilities (B, T, k))."""
    return top_k(all_logits(model, idx), k)


def next_token_losses(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] at every position: logits (B, T, V), targets (B, T) -> (B, T)."""
    return -np.take_along_axis(log_softmax(logits), targets[..., None], axis=-1)[..., 0]


def _inputs_and_targets(idx, what: str) -> tuple[np.ndarray, np.ndarray]:
    ids = token_ids(idx)
    if ids.shape[1] < 2:
        raise ValueError(f"{what} needs at least 2 tokens per row, got {ids.shape[1]}")
    return ids[:, :-1], ids[:, 1:]


def token_losses(model, idx) -> np.ndarray:
    """Surprisal of each token given the ones before it, -log p(idx[:, t+1] | idx[:, :t+1]) in nats:
    (B, T - 1) (divide by log 2 for bits). Its mean is the model's cross-entropy loss on idx."""
    x, y = _inputs_and_targets(idx, "token_losses")
    return next_token_losses(all_logits(model, x), y)


# ---- direct logit attribution ----------------------------------------------------------------------

@dataclass
class LogitAttribution:
    """How much each writer to the final residual stream adds to one logit (or logit difference)
    at one position, through the final norm with its scale frozen (see direct_logit_attribution).
    Every array has the batch axis first; total() equals logit up to float rounding."""
    embed: np.ndarray        # (B,) the token embedding (a soft prompt's vector at a virtual position)
    pos_embed: np.ndarray    # (B,) the position embedding (zeros with RoPE, which adds none)
    heads: np.ndarray        # (B, n_layer, n_head) each head's z_h W_O^h
    attn_bias: np.ndarray    # (B, n_layer) each attention output projection's bias
    mlp: np.ndarray          # (B, n_layer) each MLP's output
    norm_bias: np.ndarray    # (B,) the final norm's bias (zeros for RMSNorm or a bias-free LayerNorm)
    logit: np.ndarray        # (B,) the model's own logit (difference), for comparison

    def total(self) -> np.ndarray:
        return (self.embed + self.pos_embed + self.heads.sum(axis=(1, 2)) + self.attn_bias.sum(axis=1)
                + self.mlp.sum(axis=1) + self.norm_bias)


def _head_outputs(attn: CausalSelfAttention, z: np.ndarray, device) -> tuple[np.ndarray, np.ndarray]:
    """z (B, nh, hs) at one position -> (each head's share of the output projection (B, nh, C), its
    bias (B, C)), through the layer itself (so a LoRA or quantized c_proj counts as it computes)."""
    B, nh, hs = z.shape
    one_head = np.zeros((B, nh + 1, nh * hs), z.dtype)                     # row h: only head h's slice; row nh: zeros
    for h in range(nh):
        one_head[:, h, h * hs:(h + 1) * hs] = z[:, h]
    out = host_array(attn.c_proj(Tensor(one_head, device=device)))         # (B, nh + 1, C)
    bias = out[:, nh]                                                      # c_proj(0): the bias alone
    return out[:, :nh] - bias[:, None], bias


def frozen_norm(norm, x: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """The pieces (B, n, C) of residuals x (B, C) through the norm with its scale s frozen at x's:
    LayerNorm (p - mean(p)) / s * w, s = sqrt(var(x) + eps); RMSNorm p / s * w, s = sqrt(mean(x^2) + eps).
    The bias is left out (it is not any piece's). -> (B, n, C) float64; summed over n, plus the bias,
    it is norm(x)."""
    x, pieces = x.astype(np.float64), pieces.astype(np.float64)
    if not isinstance(norm, RMSNorm):                                      # LayerNorm: centring is linear too
        x = x - x.mean(axis=-1, keepdims=True)
        pieces = pieces - pieces.mean(axis=-1, keepdims=True)
    s = np.sqrt((x ** 2).mean(axis=-1) + norm.eps)                         # (B,)
    return pieces / s[:, None, None] * host_array(norm.weight).astype(np.float64)


def direct_logit_attribution(model, idx, target, pos: int = -1) -> LogitAttribution:
    """Split the logit of token ``target`` (or, for target = (a, b), logit[a] - logit[b]) at real
    position ``pos`` among what wrote the final residual stream x: the embeddings, every attention
    head, every attention output bias, every MLP, and the final norm's bias.

    Convention (frozen scale): the final norm is linear once its scale s is frozen at the value the
    whole x gives (see frozen_norm). With x = sum of pieces p, each piece contributes
    ((p - mean(p)) / s * w) . u (RMSNorm: (p / s * w) . u), u the output layer's row for the target
    (u_a - u_b for a difference), and the norm's bias b . u; the contributions sum to the logit.
    A head's piece is z_h W_O^h, its slice of the output projection. Needs plain attention layers (a
    bottleneck adapter after the attention would break the split by head)."""
    gpt = as_gpt(model)
    ids = token_ids(idx)
    B, T = ids.shape
    if not -T <= pos < T:
        raise ValueError(f"pos {pos} is outside a sequence of {T} tokens")
    tokens = tuple(int(t) for t in target) if isinstance(target, (tuple, list)) else (int(target),)
    V = gpt.config.vocab_size
    if len(tokens) not in (1, 2) or not all(0 <= t < V for t in tokens):
        raise ValueError(f"target must be a token id or a pair (a, b) of token ids in [0, {V}), got {target!r}")
    L, blocks = gpt.config.n_layer, list(gpt.transformer.h)
    for layer, block in enumerate(blocks):
        if not isinstance(block.attn, CausalSelfAttention):
            raise ValueError(f"direct_logit_attribution: block {layer}'s attention is wrapped "
                             f"({type(block.attn).__name__}); the split by head needs the plain attention layer")
    names = ["hook_embed", f"blocks.{L - 1}.hook_resid_post"] + (["hook_pos_embed"] if gpt.config.pos != "rope" else [])
    names += [f"blocks.{layer}.{h}" for layer in range(L) for h in ("attn.hook_z", "hook_mlp_out")]
    device, ln_f = gpt.transformer.wte.weight.device, gpt.transformer.ln_f

    def target_logit(logits):                                              # (..., V) -> (...)
        return logits[..., tokens[0]] - (logits[..., tokens[1]] if len(tokens) == 2 else 0)

    with inference(model):
        logits, cache = run_with_cache(model, ids, names)
        t = gpt.num_virtual_tokens + pos % T                               # the position in the hooks' frame
        x = cache[f"blocks.{L - 1}.hook_resid_post"][:, t]                 # (B, C): the whole final residual
        pos_embed = (np.broadcast_to(cache["hook_pos_embed"][..., t, :], x.shape)   # (P+T, C) or (B, P+T, C) -> (B, C)
                     if "hook_pos_embed" in cache else np.zeros_like(x))
        heads, biases = zip(*(_head_outputs(block.attn, cache[f"blocks.{layer}.attn.hook_z"][:, t], device)
                              for layer, block in enumerate(blocks)))
        pieces = [cache["hook_embed"][:, t, None], pos_embed[:, None],        # each (B, n, C)
                  np.concatenate(heads, axis=1), np.stack(biases, axis=1),
                  np.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, t] for layer in range(L)], axis=1)]
        sizes = [p.shape[1] for p in pieces]
        normed = frozen_norm(ln_f, x, np.concatenate(pieces, axis=1))     # (B, n, C)
        bias = host_array(ln_f.bias) if getattr(ln_f, "bias", None) is not None else np.zeros(x.shape[-1])
        # then the norm's bias, and a zero row: its logits (an output-layer bias, if any) come off every row
        rows = np.concatenate([normed, np.broadcast_to(bias, (B, 1, bias.size)), np.zeros((B, 1, bias.size))], axis=1)
        out = target_logit(host_array(gpt.lm_head(Tensor(rows.astype(x.dtype), device=device))))   # (B, n + 2)
        out = (out[:, :-1] - out[:, -1:]).astype(np.float64)
        logit = target_logit(host_array(logits)[:, pos]).astype(np.float64)
    embed, pos_part, head_part, bias_part, mlp_part = np.split(out[:, :-1], np.cumsum(sizes)[:-1], axis=1)
    return LogitAttribution(embed=embed[:, 0], pos_embed=pos_part[:, 0], heads=head_part.reshape(B, L, -1),
                            attn_bias=bias_part, mlp=mlp_part, norm_bias=out[:, -1], logit=logit)


# ---- ablation --------------------------------------------------------------------------------------

def head_ablation(heads, mode: str = "zero"):
    """A hook for blocks.{l}.attn.hook_z that knocks out the given head(s): "zero" sets their z to 0,
    "mean" to its mean over the batch and positions (the head still writes, but the same thing
    everywhere). Use with run_with_hooks(model, ids, [(f"blocks.{l}.attn.hook_z", head_ablation(h))])."""
    if mode not in ("zero", "mean"):
        raise ValueError(f"head_ablation mode must be 'zero' or 'mean', got {mode!r}")
    heads = [int(heads)] if np.ndim(heads) == 0 else [int(h) for h in heads]

    def ablate(z, name):                                                   # z (B, T, nh, hs)
        for h in heads:
            if not 0 <= h < z.shape[2]:
                raise ValueError(f"head {h} is outside 0 .. {z.shape[2] - 1} at {name}")
        out = z.copy()
        for h in heads:
            out[:, :, h] = 0 if mode == "zero" else z[:, :, h].mean(axis=(0, 1))
        return out
    return ablate


def head_ablation_effects(model, idx, layers=None, mode: str = "zero") -> np.ndarray:
    """How much the loss on idx (mean next-token cross-entropy, nats) rises when each head is ablated
    alone -> (n_layer, n_head); rows of layers not asked for are NaN. One forward per layer: the batch
    is repeated n_head times and copy h has head h ablated (bigger matmuls, far faster than a
    forward per head on a CPU)."""
    gpt = as_gpt(model)
    x, y = _inputs_and_targets(idx, "head_ablation_effects")
    B, (L, nh) = len(x), (gpt.config.n_layer, gpt.config.n_head)
    layers = range(L) if layers is None else [int(layer) for layer in layers]
    for layer in layers:
        if not 0 <= layer < L:
            raise ValueError(f"layer {layer} is outside 0 .. {L - 1}")

    def each_copy_its_head(z, name):                                       # z (nh * B, T, nh, hs)
        return backend.xp_of(z).concatenate([head_ablation(h, mode)(z[h * B:(h + 1) * B], name) for h in range(nh)])

    effects = np.full((L, nh), np.nan)
    with inference(model):
        base = next_token_losses(all_logits(model, x), y).mean()
        copies = np.tile(x, (nh, 1))                                       # (nh * B, T - 1)
        for layer in layers:
            logits, _ = run_with_hooks(model, copies, [(f"blocks.{layer}.attn.hook_z", each_copy_its_head)])
            logits = host_array(logits)
            effects[layer] = [next_token_losses(logits[h * B:(h + 1) * B], y).mean() - base for h in range(nh)]
    return effects
