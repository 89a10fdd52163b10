"""`tinygrad-lm info`: parameters, FLOPs per token, memory and config of a checkpoint or preset."""
from __future__ import annotations

from ..models import GPT, GPTConfig
from ..presets import PRESETS, get_preset
from .common import load_checkpoint


def add_parser(sub) -> None:
    i = sub.add_parser("info", help="parameter count, FLOPs per token, memory and config")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", metavar="PATH", help="a training run's folder (or its checkpoint file)")
    src.add_argument("--model", metavar="NAME|PATH", help="a pretrained model (HF folder, .gguf, model id, "
                     "smollm2-135m-instruct)")
    src.add_argument("--preset", choices=tuple(PRESETS), help="a preset's model")
    i.add_argument("--vocab-size", "--vocab_size", dest="vocab_size", type=int, default=None, metavar="N",
                   help="vocabulary size for --preset (default: the preset's own, else 257: 256 bytes + 1 special)")


def run(args) -> int:
    batch = None
    if args.ckpt:
        ck = load_checkpoint(args.ckpt)
        cfg = GPTConfig.from_dict(ck["meta"]["model_config"])
        batch = ck["meta"].get("train_config", {}).get("batch_size")
        source = str(ck["path"])
    elif args.model:
        from ..hub import resolve
        from ..hub.pretrained import read_pretrained
        path = resolve(args.model)
        cfg, _, meta = read_pretrained(path, weights=False)
        fmt = meta.get("file_type_name") or meta.get("format") or ""
        source = f"{path} ({meta['family']} family{', ' + str(fmt) if fmt else ''})"
    else:
        p = get_preset(args.preset)
        cfg = GPTConfig(**{"vocab_size": 257, **p["model"], **({"vocab_size": args.vocab_size} if args.vocab_size else {})})
        batch = p["train"]["batch_size"]
        source = f"preset {args.preset}: {p['about']}"
    from ..nn.layers import skip_init
    with skip_init():  # only sizes are asked: no random weights to draw (135M of them for SmolLM2)
        model = GPT(cfg)
    n_all, n = model.num_parameters(), model.num_params()
    C, L, T, H = cfg.n_embd, cfg.n_layer, cfg.block_size, cfg.n_head
    # activations kept for backward, float32: about T*C*(34 + 5*H*T/C) values... per layer and sequence
    # (Korthikanti et al. 2022, counted in 2-byte units; doubled for float32)
    act = (batch or 1) * L * T * C * (34 + 5 * H * T / C) * 2
    print(f"source: {source}")
    print(f"parameters: {n_all:,} ({n:,} excluding position embeddings)")
    print(f"FLOPs per token (training, fwd+bwd): {model.flops_per_token():,}")
    print(f"memory, float32: weights {n_all * 4 / 2**20:.1f} MiB; weights+grads+AdamW moments "
          f"{n_all * 16 / 2**20:.1f} MiB; activations for batch {batch or 1} ~{act / 2**20:.0f} MiB (estimate)")
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items()))
    return 0
