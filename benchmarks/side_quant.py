"""Worker of benchmarks/bench_quant.py: SmolLM2 with float32, int8 or NF4 Linear weights, in its own process.

Loads the model as `tinygrad-lm generate --quantize KIND` does (cli.common.load_source), then
measures the weights' bytes, the resident memory, greedy decoding speed and the perplexity of a
text (the `eval` command's sliding windows)."""
from __future__ import annotations

import time

import tinygrad_lm  # noqa: F401,I001  (first, as the CLI does: its thread settings precede NumPy's)
import numpy as np  # noqa: E402

from .peers import _status_kib, timed_calls, worker_main  # noqa: E402


def run(args: dict) -> dict:
    from tinygrad_lm.cli.common import load_source
    from tinygrad_lm.cli.eval import perplexity
    from tinygrad_lm.data import load_dataset
    from tinygrad_lm.peft.quant import quantized_bytes

    t0 = time.perf_counter()
    model, tok = load_source(None, args["model"], "cpu", quantize=args["quantize"])
    load_s = time.perf_counter() - t0
    rss_loaded = _status_kib("VmRSS") * 1024
    ids = np.array([tok.encode(args["prompt"])])
    decode = timed_calls(lambda: model.generate(ids, args["new_tokens"], temperature=0).data[0, ids.shape[1]:].tolist(),
                         warmup=1, n=args["repeats"])
    data, _ = load_dataset(args["data"], tokenizer=tok)
    tokens = np.concatenate([np.asarray(data.train), np.asarray(data.val)]).astype(np.int64)[:args["eval_tokens"]]
    t1 = time.perf_counter()
    total, count = perplexity(model, tokens, args["context"], args["context"], 4, "cpu")
    return {"quantize": args["quantize"], "weight_bytes": quantized_bytes(model), "load_s": load_s,
            "rss_loaded": rss_loaded, "peak_rss": _status_kib("VmHWM") * 1024, "samples": decode["samples"],
            "warmup": decode["warmup"], "tokens": decode["values"][-1], "eval_loss": total / count,
            "eval_tokens": count, "eval_s": time.perf_counter() - t1}


if __name__ == "__main__":
    worker_main({"run": run})
