"""Byte-level BPE: training and encoding speed against HF tokenizers and tiktoken (issue 10).

    python -m benchmarks.bench_tokenizer [--quick] [--rounds N] [--vocab-size 8192] [--pattern gpt4]
                                         [--json PATH]

Data: the built-in corpus (``tinygrad_lm.data.default_corpus_text()``, 4 MB of the standard
library's Python source), written to a temporary UTF-8 file that every side reads.

- **Training**: ``BPETokenizer.train([file], vocab_size, pattern)`` against HF tokenizers'
  ``BpeTrainer`` with the same vocabulary size (256 bytes + merges + ``<|endoftext|>``) and the
  same pre-tokenizer regex (``Split`` + ``ByteLevel(use_regex=False)``, the regex spelled for
  Oniguruma by ``formats.hf_regex``), trained from the same file by ``Tokenizer.train``, as
  its users call it (its own default threads).
- **Encoding**: the whole corpus in one call, with the vocabulary we trained, against tiktoken
  (``Encoding(pat_str, mergeable_ranks=our ranks)``, ``encode_ordinary``) and HF tokenizers (the
  tokenizer.json ``tok.save`` writes, ``Tokenizer.from_file``, ``encode``). Each call uses one
  thread on every side (HF's ``encode`` of one string: CPU time = wall time, measured). Every
  side's ids are hashed and must agree.

Method (benchmarks/peers.py): each side in a fresh process per round with the user's
environment and its library's defaults, rounds alternated, warm-up calls excluded (imports, JIT,
our Numba kernels' cache), medians of all timed calls; ratio = our time / peer time (< 1: we are
faster), of the medians, with the per-round ratios beside it. Our encode keeps no cache between
calls for the named patterns (its chunk cache lives within a call), so a repeat is not faster
than a first call.
"""
from __future__ import annotations

import tinygrad_lm  # noqa: F401  (first, as users do)

import argparse
import os
import base64
import json
import tempfile
import time
from pathlib import Path

from tinygrad_lm.data import default_corpus_text
from tinygrad_lm.tokenizers import BPETokenizer
from tinygrad_lm.tokenizers.formats import hf_regex

from . import peers
from .common import format_table, machine_info, write_json

WORKER = "benchmarks.side_tokenizers"
OURS = peers.Side("tinygrad_lm BPETokenizer", WORKER, {"library": "ours"})
TIKTOKEN = peers.Side("tiktoken", WORKER, {"library": "tiktoken"})
HF = peers.Side("HF tokenizers", WORKER, {"library": "hf"})


def write_files(tok: BPETokenizer, text: str, folder: Path) -> dict:
    """The corpus and our vocabulary in each side's own format: our JSON, tiktoken ranks
    (``base64 rank`` lines, rank = id), an HF tokenizer.json (written by ``tok.save``)."""
    corpus = folder / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    ours = folder / "ours.json"
    ours.write_text(json.dumps(tok.to_dict()), encoding="utf-8")    # our own JSON (what checkpoints hold)
    ranks = folder / "ours.tiktoken"
    ranks.write_text("".join(f"{base64.b64encode(b).decode()} {i}\n"
                             for b, i in sorted(tok.vocab.items(), key=lambda kv: kv[1])))
    hf = folder / "tokenizer.json"
    tok.save(hf)                       # HF's tokenizer.json, as a user would hand our tokenizer to HF
    return {"corpus": str(corpus), "ours": str(ours), "ranks": str(ranks), "hf": str(hf),
            "pat_str": tok.pattern, "hf_pattern": hf_regex(tok.pattern)}


def compare(sides, task, args, rounds, baseline) -> tuple[dict, dict]:
    """Alternated rounds of ``task``; per side its summary, and our ratio to each peer."""
    runs = peers.alternate(sides, task, args, rounds)
    summaries = {label: peers.summarise(rs) for label, rs in runs.items()}
    ratios = {label: peers.ratio(summaries[OURS.label], s) for label, s in summaries.items() if label != baseline}
    return runs, {"summaries": summaries, "ours_over_peer": ratios}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 timed call per side")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds per side (default 3)")
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--pattern", default="gpt4")
    ap.add_argument("--json", default="benchmarks/results/tokenizer.json")
    args = ap.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    train_repeats, encode_repeats = (1, 1) if args.quick else (2, 5)
    load_before = list(os.getloadavg())

    text = default_corpus_text()
    n_bytes = len(text.encode("utf-8"))
    t0 = time.perf_counter()
    tok = BPETokenizer.train(text, args.vocab_size, pattern=args.pattern, progress=False)
    print(f"corpus: {n_bytes:,} bytes; our vocabulary ({tok.vocab_size} tokens, {len(tok.merges)} merges, "
          f"pattern {args.pattern}) trained in {time.perf_counter() - t0:.2f} s in this process (compile included)")
    results = {"corpus_bytes": n_bytes, "vocab_size": args.vocab_size, "pattern": args.pattern, "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        files = write_files(tok, text, Path(tmp))
        base = {**files, "vocab_size": args.vocab_size, "pattern": args.pattern, "warmup": 1}

        print(f"training: {rounds} round(s) per side, each in a fresh process: 1 warm-up training (excluded), "
              f"then {train_repeats} timed", flush=True)
        train_runs, train = compare([OURS, HF], "train", {**base, "repeats": train_repeats}, rounds, OURS.label)
        print(f"encoding: {rounds} round(s) per side: 1 warm-up call (excluded), then {encode_repeats} timed",
              flush=True)
        enc_runs, enc = compare([OURS, TIKTOKEN, HF], "encode", {**base, "repeats": encode_repeats}, rounds, OURS.label)

    digests = {label: {(r["n_ids"], r["ids_sha256"]) for r in rs} for label, rs in enc_runs.items()}
    same_ids = len(set().union(*digests.values())) == 1
    n_ids = next(iter(digests[OURS.label]))[0]
    print(f"ids: {n_ids:,} per side; identical on every side and round: {same_ids}")

    rows = []
    for label, s in train["summaries"].items():
        r = train["ours_over_peer"].get(label)
        rows.append(["train", label, s["median_s"], _spread(s), _ratio(r)])
    for label, s in enc["summaries"].items():
        r = enc["ours_over_peer"].get(label)
        rows.append(["encode", label, s["median_s"], f"{n_bytes / s['median_s'] / 1e6:.2f} MB/s", _ratio(r)])
    table = format_table(["task", "side", "median s", "spread / throughput", "ours / side (per round)"], rows)
    print(table)
    load_after = list(os.getloadavg())
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")
    env, dropped = peers.user_env()
    results.update(train=train, encode=enc, same_ids=same_ids, n_ids=n_ids, table=table,
                   encode_mb_per_s={label: n_bytes / s["median_s"] / 1e6 for label, s in enc["summaries"].items()},
                   loadavg_before=load_before, loadavg_after=load_after,
                   runs={"train": train_runs, "encode": enc_runs}, peer_env=peers.relevant_env(env),
                   dropped_from_user_env=dropped)
    path = write_json(args.json, results, machine=machine_info(env))
    print(f"wrote {path}")


def _spread(s: dict) -> str:
    return f"rounds {', '.join(f'{x:.2f}' for x in s['round_medians_s'])}"


def _ratio(r: dict | None) -> str:
    if r is None:
        return ""
    return f"{r['of_medians']:.2f} ({', '.join(f'{x:.2f}' for x in r['per_round'])})"


if __name__ == "__main__":
    main()
