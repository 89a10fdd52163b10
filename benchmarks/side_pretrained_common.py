"""What every side of the SmolLM2-135M inference comparison does in its process (bench_pretrained).

Standard library only: a peer's process imports this and never tinygrad_lm. A side module
(side_pretrained_tinygrad, side_pretrained_transformers) times its own imports, then hands
:func:`run` a :class:`Engine` (its load, tokenizer, generate and prefill as its users call them);
:func:`run` does the same steps in the same order on every side:

1. load the model and the tokenizer (seconds each), then read the peak memory;
2. the chat prompt -> ids with the side's own tokenizer and chat template;
3. decode: greedy generation of exactly ``new_tokens`` tokens with the library's own generate,
   ``warmup`` calls (reported apart), then ``decode_repeats`` timed ones; peak memory again;
4. prefill: one no-grad forward of ``prefill_len`` ids (the chat prompt's ids repeated and cut:
   the same ids on every side, checked by the parent) into a fresh KV cache, last-position
   logits, ``warmup`` + timed ``prefill_repeats`` per variant; peak memory again.
"""
from __future__ import annotations

import hashlib
import resource
import time
from dataclasses import dataclass
from typing import Callable

from .peers import timed_calls

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass
class Engine:
    load_model: Callable[[], object]                 # -> model (ready: eval mode, float32)
    load_tokenizer: Callable[[], object]             # -> tokenizer
    prompt_ids: Callable[[object], list]             # tokenizer -> chat prompt ids (list of int)
    generate: Callable[[object, list, int], list]    # model, prompt ids, n -> the n new ids
    prefill: dict                                    # name -> (model, ids -> a call returning the logits);
                                                     # the first is the headline, its logits the last position's
    as_list: Callable[[object], list]                # those logits -> a list of floats (last position)


def memory(ru_maxrss_at_start: int) -> dict:
    """Peak and current memory of this process: getrusage's ru_maxrss (Linux carries it over from
    the parent across fork+exec: ``ru_maxrss_at_start``, KiB, read before the side's imports, is
    that floor) and /proc's VmHWM (the peak of this process alone) and VmRSS (now)."""
    out = {"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "ru_maxrss_at_start_mib": ru_maxrss_at_start / 1024}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("VmHWM", "VmRSS"):
                    out[key + "_mib"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def prefill_ids(prompt: list, n: int) -> list:
    """The chat prompt's ids repeated until ``n`` long (the same on every side)."""
    return [prompt[i % len(prompt)] for i in range(n)]


def digest(ids: list) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def top(logits: list, k: int = 10) -> list:
    """The k largest logits as [id, value] pairs, largest first (to compare sides' prefill outputs)."""
    order = sorted(range(len(logits)), key=logits.__getitem__, reverse=True)[:k]
    return [[i, float(logits[i])] for i in order]


def run(engine: Engine, args: dict, import_s: float, ru_maxrss_at_start: int) -> dict:
    """One process's measurements (see the module's docstring)."""
    n_new, warmup = args["new_tokens"], args["warmup"]
    t0 = time.perf_counter()
    model = engine.load_model()
    t1 = time.perf_counter()
    tok = engine.load_tokenizer()
    t2 = time.perf_counter()
    mem = {"after_load": memory(ru_maxrss_at_start)}
    prompt = [int(i) for i in engine.prompt_ids(tok)]

    dec = timed_calls(lambda: engine.generate(model, prompt, n_new), warmup, args["decode_repeats"])
    outputs = dec.pop("values")
    tokens = [int(i) for i in outputs[-1]]
    if len(tokens) != n_new:
        raise RuntimeError(f"generate made {len(tokens)} tokens, not {n_new}")
    mem["after_generate"] = memory(ru_maxrss_at_start)

    ids = prefill_ids(prompt, args["prefill_len"])
    pre, last = {}, None
    for name, make in engine.prefill.items():
        call, slot = make(model, ids), {}

        def keep_latest():   # only the latest call's logits stay alive (all 512 positions' are 100 MB)
            slot.pop("logits", None)
            slot["logits"] = call()
        pre[name] = timed_calls(keep_latest, warmup, args["prefill_repeats"])
        del pre[name]["values"]
        last = slot["logits"] if last is None else last   # the headline's (the first variant's)
    mem["after_prefill"] = memory(ru_maxrss_at_start)
    out = {"import_s": import_s, "load_model_s": t1 - t0, "load_tokenizer_s": t2 - t1, "load_s": t2 - t0,
           "prompt_ids": prompt, "prefill_ids_sha": digest(ids), "prefill_len": len(ids),
           "decode": {**dec, "new_tokens": n_new}, "tokens": tokens,
           "same_tokens_every_call": all([int(i) for i in o] == tokens for o in outputs),
           "prefill": pre, "prefill_top10": top(engine.as_list(last)), "memory": mem}
    return out
