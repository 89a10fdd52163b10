"""Each side of the tokenizer comparison, one process per round (see benchmarks/peers.py).

    python -m benchmarks.side_tokenizers TASK 'JSON ARGS'      (run by bench_tokenizer, not by hand)

Tasks ``train`` and ``encode``; the argument ``library`` picks the side: ``ours`` (tinygrad_lm),
``tiktoken`` (encode only) or ``hf`` (HF tokenizers). A task imports its own library first and
nothing of the others:
a peer's process never loads tinygrad_lm (whose import makes thread settings for itself), and
everything it needs comes from files the parent wrote (the corpus as UTF-8 text, our ranks in
tiktoken's ``base64 rank`` format, an HF ``tokenizer.json``). Each side runs with its library's
defaults; the encode tasks are one call on the whole corpus (tiktoken's ``encode_ordinary`` and
HF's ``encode`` use one thread per call).
"""
import base64
import hashlib
import sys
import time

from .peers import timed_calls, worker_main

LIBRARY = {}   # what the task loaded: name, version, import seconds


def _load(name: str):
    t0 = time.perf_counter()
    module = __import__(name)
    LIBRARY.update(library=name, version=getattr(module, "__version__", "?"), import_s=time.perf_counter() - t0)
    return module


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _ids_digest(ids) -> dict:
    """Count and hash of an id sequence, so the parent checks every side made the same ids."""
    h = hashlib.sha256()
    h.update(",".join(map(str, ids)).encode())
    return {"n_ids": len(ids), "ids_sha256": h.hexdigest()}


def _timed_encode(encode, args: dict) -> dict:
    """Time ``encode(corpus text)``; the ids stay here: only their count and hash go back."""
    text = _read(args["corpus"])
    res = timed_calls(lambda: encode(text), args["warmup"], args["repeats"])
    ids = res.pop("values")[-1]
    return {**res, **_ids_digest(ids)}


def ours_train(args: dict) -> dict:
    _load("tinygrad_lm")
    from tinygrad_lm.tokenizers import BPETokenizer

    def train():
        return BPETokenizer.train([args["corpus"]], args["vocab_size"], pattern=args["pattern"], progress=False)
    res = timed_calls(train, args["warmup"], args["repeats"])
    tok = res.pop("values")[-1]
    return {**res, "vocab_size": tok.vocab_size, "merges": len(tok.merges)}


def ours_encode(args: dict) -> dict:
    _load("tinygrad_lm")
    import json

    from tinygrad_lm.tokenizers import BPETokenizer
    with open(args["ours"], encoding="utf-8") as f:
        tok = BPETokenizer.from_dict(json.load(f))
    return _timed_encode(tok.encode, args)


def tiktoken_encode(args: dict) -> dict:
    tiktoken = _load("tiktoken")
    with open(args["ranks"], "rb") as f:
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}
    enc = tiktoken.Encoding("bench", pat_str=args["pat_str"], mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    return _timed_encode(enc.encode_ordinary, args)


def hf_train(args: dict) -> dict:
    tokenizers = _load("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    def train():
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(tokenizers.Regex(args["hf_pattern"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=args["vocab_size"], special_tokens=["<|endoftext|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train([args["corpus"]], trainer)
        return tok
    res = timed_calls(train, args["warmup"], args["repeats"])
    tok = res.pop("values")[-1]
    return {**res, "vocab_size": tok.get_vocab_size()}


def hf_encode(args: dict) -> dict:
    tokenizers = _load("tokenizers")
    tok = tokenizers.Tokenizer.from_file(args["hf"])
    return _timed_encode(lambda text: tok.encode(text, add_special_tokens=False).ids, args)


def runtime() -> dict:
    extra = {}
    if LIBRARY.get("library") == "tinygrad_lm":   # our kernels' compiler (already loaded by the task)
        import numba
        extra["numba"] = numba.__version__
    return {**LIBRARY, **extra, "python": sys.version.split()[0]}


TRAIN = {"ours": ours_train, "hf": hf_train}
ENCODE = {"ours": ours_encode, "tiktoken": tiktoken_encode, "hf": hf_encode}

if __name__ == "__main__":
    worker_main({"train": lambda a: TRAIN[a["library"]](a), "encode": lambda a: ENCODE[a["library"]](a)}, runtime)
