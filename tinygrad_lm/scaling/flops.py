"""Training FLOPs per token, counted as Chinchilla's appendix F counts them, with 6N beside it.

Hoffmann et al. (2022), "Training Compute-Optimal Large Language Models", Table A4, per sequence of
T tokens (d = d_model, V = vocabulary, h = heads, k = key size):

    embeddings           2 T V d
    attention, per layer QKV 2 T 3 d (h k) | logits 2 T T (h k) | softmax 3 h T T
                         | softmax @ values 2 T T (h k) | output projection 2 T (h k) d
    dense block          2 T (d ffw + ffw d)
    final logits         2 T d V
    forward pass         embeddings + layers x (attention + dense) + logits;  backward = 2 x forward

Divided by T it is per token. Like the paper we count the attention over the whole context (a
causal mask halves the real work; the paper does not take that off), leave out norms, biases and
position embeddings, and count the embedding as the one-hot matmul it replaces. The projections are
counted from the model's own weight shapes, so grouped-query attention (narrower K and V) and
SwiGLU (three MLP matrices) come out right without a formula of their own.

6N is the rule of thumb (Kaplan et al. 2020) the primers use for C = 6 N D: 2 FLOPs per parameter
per token forward, 4 backward."""
from __future__ import annotations

from ..models import GPT, GPTConfig
from ..nn.layers import skip_init


def param_count(config: GPTConfig, non_embedding: bool = False) -> int:
    """Parameters of a GPT of this shape (tied embeddings counted once), without drawing weights.
    Chinchilla's N counts every parameter, embeddings included; non_embedding=True gives Kaplan's."""
    with skip_init():
        model = GPT(config)
    n = model.num_params(non_embedding=False)
    if non_embedding:
        shapes = GPT.parameter_shapes(config)
        n -= sum(_size(shapes[name]) for name in ("transformer.wte.weight", "transformer.wpe.weight") if name in shapes)
        if not config.tie_weights:
            n -= _size(shapes["lm_head.weight"])
    return n


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> dict:
    """Training FLOPs per token of a GPT of this shape at context seq_len (default: block_size):

    {"embeddings", "attention", "mlp", "logits": forward FLOPs of each part, all layers summed;
     "forward": their sum; "training": 3 x forward; "six_n": 6 x param_count(config);
     "params": param_count(config)}."""
    c = config
    T = c.block_size if seq_len is None else seq_len
    if not isinstance(T, int) or isinstance(T, bool) or not 1 <= T <= c.block_size:
        raise ValueError(f"seq_len must be an integer in [1, block_size={c.block_size}], got {seq_len!r}")
    shapes = GPT.parameter_shapes(c)

    def matmul_flops(part: str) -> int:   # 2 FLOPs (multiply + add) per weight of every matrix in layer 0
        return sum(2 * _size(s) for name, s in shapes.items()
                   if name.startswith(f"transformer.h.0.{part}.") and name.endswith("weight") and len(s) == 2)

    qk = c.n_head * c.hs                  # (h k): the width of queries (and of the values each head mixes)
    attention = (matmul_flops("attn")     # Q, K, V projections and the output projection
                 + 2 * T * qk             # q . k logits for every earlier (and, as counted, later) position
                 + 3 * c.n_head * T       # softmax
                 + 2 * T * qk)            # softmax @ values
    counts = {"embeddings": 2 * c.vocab_size * c.n_embd,
              "attention": c.n_layer * attention,
              "mlp": c.n_layer * matmul_flops("mlp"),
              "logits": 2 * c.n_embd * c.vocab_size}
    counts["forward"] = sum(counts.values())
    counts["training"] = 3 * counts["forward"]
    counts["params"] = param_count(c)
    counts["six_n"] = 6 * counts["params"]
    return counts


def _size(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
