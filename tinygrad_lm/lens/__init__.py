"""Looking inside a model: named hook points, an activation cache, and analyses built on them.

    logits, cache = model.run_with_cache(ids)                        # every hook point; or names=[...]
    cache["blocks.3.attn.hook_pattern"]                              # (B, n_head, T, T) NumPy array
    logits, _ = model.run_with_hooks(ids, hooks=[("blocks.3.attn.hook_z", head_ablation(5))])

The same as functions: run_with_cache(model, ids, ...), run_with_hooks(model, ids, ...), and
``with hooked(model, hooks): ...`` around any call (generate, a training step). A PeftModel works
like its base. Hook functions are fn(activation, name) -> None (look) or a replacement array of the
same shape (ablation, activation patching); see nn.HookPoint.

Hook points (TransformerLens names). B batch, T tokens, C = n_embd, nh = n_head, nkv = n_kv_head,
hs = head size, H = the MLP's hidden size, l = 0 .. n_layer-1. x_l is the residual stream entering
block l; LN is the block's norm: LayerNorm (x - mean(x)) / sqrt(var(x) + eps) * w + b, or RMSNorm
x / sqrt(mean(x^2) + eps) * w.

| name                             | equation                                                  | shape              |
|----------------------------------|-----------------------------------------------------------|--------------------|
| hook_embed                       | W_E[ids]                                                  | (B, T, C)          |
| hook_pos_embed                   | W_pos[positions] (learned) or the sinusoid table; no RoPE | (T, C) *           |
| blocks.l.hook_resid_pre          | x_l = embed + pos_embed (l = 0), else resid_post of l - 1 | (B, T, C)          |
| blocks.l.ln1.hook_normalized     | LN1(x_l)                                                  | (B, T, C)          |
| blocks.l.attn.hook_q             | RoPE(LN1(x_l) W_Q + b_Q), per head                        | (B, T, nh, hs)     |
| blocks.l.attn.hook_k             | RoPE(LN1(x_l) W_K + b_K), per KV head                     | (B, T, nkv, hs)    |
| blocks.l.attn.hook_v             | LN1(x_l) W_V + b_V, per KV head                           | (B, T, nkv, hs)    |
| blocks.l.attn.hook_scores        | q_h k_g^T / sqrt(hs), -inf where masked (before softmax)  | (B, nh, T, T)      |
| blocks.l.attn.hook_pattern       | softmax(scores) over the keys (each row sums to 1)        | (B, nh, T, T)      |
| blocks.l.attn.hook_z             | pattern_h v_g                                             | (B, T, nh, hs)     |
| blocks.l.hook_attn_out           | concat_h(z_h) W_O + b_O                                   | (B, T, C)          |
| blocks.l.hook_resid_mid          | x_l + attn_out                                            | (B, T, C)          |
| blocks.l.ln2.hook_normalized     | LN2(resid_mid)                                            | (B, T, C)          |
| blocks.l.mlp.hook_pre            | LN2(resid_mid) W_in + b_in (SwiGLU: [gate, up] stacked)   | (B, T, H) or 2H    |
| blocks.l.mlp.hook_post           | gelu(pre), or silu(gate) * up                             | (B, T, H)          |
| blocks.l.hook_mlp_out            | post W_out + b_out                                        | (B, T, C)          |
| blocks.l.hook_resid_post         | resid_mid + mlp_out = x_{l+1}                             | (B, T, C)          |
| ln_final.hook_normalized         | LN_f(resid_post of the last block); logits = this W_U^T   | (B, T, C)          |

Notes on the table:
- q and k are after RoPE (RoPE models), as they enter the dot product. k and v keep n_kv_head
  heads (grouped-query attention): query head h reads KV head g = h // (nh / nkv).
- * hook_pos_embed is (T, C), shared by the batch, or (B, T, C) for packed rows (segment_ids:
  positions restart per sequence). RoPE models have no hook_pos_embed.
- Masked means the causal mask and, for packed rows, other sequences' tokens.
- With a soft prompt (prompt tuning) every hook up to the last resid_post counts its P virtual
  tokens first (T becomes P + T); ln_final.hook_normalized and the logits hold the real T only.
- With a KV cache (generation inside ``hooked``) T is the new tokens and scores/pattern are
  (B, nh, T, T_cached + T).
- Without hooks a forward is unchanged: each hook point is one attribute test. Attention stays on
  the fused kernel (no T x T matrix kept) unless attn.hook_scores or attn.hook_pattern is hooked.
- A replacement is a constant: no gradient flows back through a replaced activation.

Analyses (analysis.py, embeddings.py): logit_lens, direct_logit_attribution (the final norm's scale
frozen: see its docstring), top_k_next_tokens, token_losses, head_ablation / head_ablation_effects,
nearest_tokens (nearest_tokens_of_each for many tokens in one pass), embedding_pca."""
from .analysis import (LogitAttribution, all_logits, direct_logit_attribution, frozen_norm, head_ablation,
                       head_ablation_effects, logit_lens, next_token_losses, residual_names, token_losses, top_k,
                       top_k_next_tokens, unembed)
from .embeddings import embedding_pca, nearest_tokens, nearest_tokens_of_each
from .hooks import ActivationCache, as_gpt, hook_points, hooked, resolve_names, run_with_cache, run_with_hooks
from ..profiler import profile   # the op profiler lives low (tinygrad_lm.profile); here for the lens's readers
from .graph import draw_graph

__all__ = ["run_with_cache", "run_with_hooks", "hooked", "hook_points", "resolve_names", "ActivationCache", "as_gpt",
           "logit_lens", "unembed", "residual_names", "direct_logit_attribution", "LogitAttribution", "frozen_norm",
           "top_k_next_tokens", "top_k", "all_logits", "token_losses", "next_token_losses", "head_ablation",
           "head_ablation_effects", "nearest_tokens", "nearest_tokens_of_each", "embedding_pca"]
__all__ += ["draw_graph", "profile"]
