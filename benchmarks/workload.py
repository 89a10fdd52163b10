"""What the GPT benchmarks run, shared by tinygrad_lm's and PyTorch's worker processes.

NumPy and the standard library only: the PyTorch worker imports this and must never load
tinygrad_lm (see benchmarks/peers.py)."""
from __future__ import annotations

import numpy as np

from .peers import Side, peak_memory, timed_calls

# The two sides of every GPT comparison (benchmarks/side_tinygrad.py, benchmarks/side_torch.py).
OURS = Side("tinygrad_lm", "benchmarks.side_tinygrad")
TORCH = Side("torch", "benchmarks.side_torch")

# The two configs of issue "Fast CPU path", vocabulary 65 (the characters of tiny Shakespeare).
CONFIGS = {
    "tiny": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch=12),    # nanoGPT's shakespeare-char CPU config
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch=64),  # its GPU config
}
VOCAB = 65
OPT = dict(weight_decay=0.1, learning_rate=1e-3, betas=(0.9, 0.99))   # nanoGPT's shakespeare-char settings
CLIP = 1.0


def model_fields(cfg: dict) -> dict:
    """GPTConfig fields (GPT-2 architecture: learned positions, LayerNorm with bias, exact GELU, tied
    lm_head) of a config: tinygrad_lm's GPTConfig(**fields) and torch_gpt.GPT build the same model."""
    return dict(vocab_size=VOCAB, n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_kv_head=cfg["n_head"],
                n_embd=cfg["n_embd"], block_size=cfg["block_size"], dropout=0.0, bias=True,
                pos="learned", norm="layernorm", mlp="gelu", tie_weights=True)


def batch(cfg: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) token ids of shape (batch, block_size): random, so both frameworks see the same batch."""
    rng = np.random.default_rng(seed)
    shape = (cfg["batch"], cfg["block_size"])
    return rng.integers(0, VOCAB, shape).astype(np.int64), rng.integers(0, VOCAB, shape).astype(np.int64)


def load_weights(path: str) -> dict[str, np.ndarray]:
    """The shared initial weights (an .npz the benchmark wrote, by state_dict name; never pickles)."""
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# ---- the worker tasks, written once for every framework ----------------------------------------

def worker_tasks(build, make_train_step, greedy, sgemm) -> dict:
    """Task name -> fn(args) -> result, for one framework's worker (benchmarks/side_*.py) given
    its parts: build(fields, weights=None) -> model in train mode (the shared initial weights when
    an .npz path is given); make_train_step(model) -> step(x, y) -> loss (x, y: NumPy int64);
    greedy(model, n, use_cache) -> the n new token ids (a list) greedily decoded from the 1-token
    prompt [0] at batch 1; sgemm(n) -> a call doing one float32 (n, n) @ (n, n)."""
    def train(args):
        """Seconds per training step on one fixed batch (args: config, fields, weights, warmup, steps)."""
        step, (x, y) = make_train_step(build(args["fields"], args.get("weights"))), batch(CONFIGS[args["config"]])
        out = timed_calls(lambda: step(x, y), args["warmup"], args["steps"])
        out["losses"] = out.pop("values")
        return out

    def memory(args):
        """Peak memory of args["steps"] steps of args["config"], over a baseline after one tiny step
        (libraries' code, JIT kernels and thread pools loaded). Weights: the framework's own init."""
        def run(name):
            step, (x, y) = make_train_step(build(model_fields(CONFIGS[name]))), batch(CONFIGS[name])
            return lambda: step(x, y)
        return peak_memory(lambda: run("tiny")(), lambda: run(args["config"]), args["steps"])

    def matmul_peak(args):
        """Seconds per float32 (n, n) @ (n, n)."""
        out = timed_calls(sgemm(args["n"]), args["warmup"], args["repeats"])
        del out["values"]
        return out

    def generate(args):
        """Seconds per greedy generation from a 1-token prompt at batch 1, per mode ("cached": KV
        cache, args["cached_tokens"] new tokens; "recompute": no cache, block_size new tokens: the
        whole window re-run every step), and the greedy tokens (to compare the two frameworks)."""
        model = build(args["fields"], args.get("weights")).eval()
        lengths = {"cached": args["cached_tokens"], "recompute": args["fields"]["block_size"]}
        out = {"tokens": greedy(model, lengths["cached"], True)}
        for mode, n in lengths.items():
            run = timed_calls(lambda: greedy(model, n, mode == "cached"), args["warmup"], args["repeats"])
            out[mode] = {"new_tokens": n, "warmup": run["warmup"], "samples": run["samples"]}
        return out

    return {"train": train, "memory": memory, "matmul_peak": matmul_peak, "generate": generate}
