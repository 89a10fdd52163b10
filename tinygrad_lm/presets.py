"""Named model + training recipes (what `tinygrad-lm train --preset NAME` starts from).

"tiny" is nanoGPT's CPU recipe for character-level Shakespeare (its README reports val loss
1.88 after 2000 iterations); "small" is nanoGPT's shakespeare_char GPU config; "gpt2" is the
124M GPT-2 shape, for `info` and experiments.

``about`` is the one line `--help` and `info` show. A preset's model may name a ``vocab_size``
(GPT-2's 50,257 BPE tokens): `info --preset` counts parameters with it. Training always sizes
the vocabulary from its tokenizer, so a run's model is the preset's shape with the tokenizer's
vocabulary (GPT-2's full 124M needs the BPE tokenizer, which is not built yet)."""
from __future__ import annotations

PRESETS: dict[str, dict] = {
    "tiny": dict(
        about="4 layers x 128 wide, context 64 (nanoGPT's CPU Shakespeare recipe, 2000 steps)",
        model=dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0),
        train=dict(batch_size=12, learning_rate=1e-3, max_iters=2000, warmup_iters=100, lr_decay_iters=2000,
                   min_lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                   eval_interval=250, eval_iters=20),
    ),
    "small": dict(
        about="6 layers x 384 wide, context 256 (nanoGPT's shakespeare_char, 5000 steps)",
        model=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        train=dict(batch_size=64, learning_rate=1e-3, max_iters=5000, warmup_iters=100, lr_decay_iters=5000,
                   min_lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                   eval_interval=250, eval_iters=200),
    ),
    "gpt2": dict(
        about="GPT-2 124M: 12 layers x 768 wide, context 1024, 50,257 tokens",
        model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0, vocab_size=50257),
        train=dict(batch_size=12, gradient_accumulation_steps=40, learning_rate=6e-4, max_iters=600000,
                   warmup_iters=2000, lr_decay_iters=600000, min_lr=6e-5, beta1=0.9, beta2=0.95,
                   weight_decay=0.1, grad_clip=1.0, eval_interval=2000, eval_iters=200),
    ),
}

DEFAULT_PRESET = "tiny"


def get_preset(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {"model": dict(PRESETS[name]["model"]), "train": dict(PRESETS[name]["train"]),
            "about": PRESETS[name]["about"]}
