"""Worker of benchmarks/bench_finetune.py: one fine-tuning method in its own process.

Loads the base and the data, adds the method (tinygrad_lm.peft.finetune.prepare, as `tinygrad-lm
finetune` does), evaluates, then runs ``steps`` optimizer steps through Trainer.train_step (the one
training loop's step) and evaluates again. Peak memory is the process's peak resident set (VmHWM)
during the steps, reset just before them, after the load's temporary buffers were given back."""
from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time

import tinygrad_lm  # noqa: F401,I001  (first, as `tinygrad-lm finetune` does: its thread settings precede NumPy's)
import numpy as np  # noqa: E402

from .peers import _reset_peak, _status_kib, worker_main  # noqa: E402


def run(args: dict) -> dict:
    from tinygrad_lm import backend
    from tinygrad_lm.cli.common import load_source
    from tinygrad_lm.peft.finetune import method_config, prepare
    from tinygrad_lm.tensor import manual_seed
    from tinygrad_lm.train import TrainConfig, Trainer

    t0 = time.perf_counter()
    model, tok = load_source(None, args["model"], "cpu")
    base_params = model.num_parameters()   # before a quantized base stops counting as parameters
    manual_seed(args["seed"])
    method = args["method"]
    config = method_config(method, {"lora_r": args["lora_r"], "target_modules": args["target_modules"],
                                    "num_virtual_tokens": args["num_virtual_tokens"]}, args["model"])
    model = prepare(model, method, config, tok)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as out:
        tcfg = TrainConfig(out_dir=out, data=args["data"], batch_size=args["batch_size"], seq_len=args["seq_len"],
                           learning_rate=args["lr"], min_lr=args["lr"] / 10, max_iters=args["steps"],
                           warmup_iters=args["warmup"], lr_decay_iters=args["steps"], weight_decay=0.0,
                           eval_iters=args["eval_batches"], seed=args["seed"], progress=False)
        trainer = Trainer(tcfg, model=model, tokenizer=tok)
        before = trainer.evaluate()["val"]
        gc.collect()
        backend.release_free_memory()
        reset = _reset_peak()
        rss_start = _status_kib("VmRSS") * 1024
        times, losses = [], []
        for _ in range(args["steps"]):
            t = time.perf_counter()
            losses.append(trainer.train_step())
            times.append(time.perf_counter() - t)
            trainer.step += 1
        peak = _status_kib("VmHWM") * 1024 if reset else None
        after = trainer.evaluate()["val"]
        # bits per byte of the evaluation's targets: the same fixed-seed batches evaluate() draws
        rng = np.random.default_rng(tcfg.seed + 1)
        n_tok = n_bytes = 0
        for _ in range(tcfg.eval_iters):
            _, y = trainer.data.get_batch("val", tcfg.batch_size, trainer.seq_len, rng)
            n_tok += y.size
            n_bytes += sum(len(tok.decode_bytes(row)) for row in np.asarray(y))
    trainable, total = trainer.model.num_parameters(trainable=True), trainer.model.num_parameters()
    per_byte = n_tok / n_bytes / math.log(2)
    return {"method": method, "trainable": trainable, "total": total, "base_params": base_params, "load_s": load_s,
            "val_before": before, "val_after": after, "bpb_before": before * per_byte, "bpb_after": after * per_byte,
            "step_s": times, "median_step_s": statistics.median(times[1:] or times), "train_losses": losses,
            "peak_rss": peak, "rss_start": rss_start, "tokens_per_step": args["batch_size"] * args["seq_len"],
            "blas_threads": backend.blas_threads()}


if __name__ == "__main__":
    worker_main({"run": run})
