"""tiktoken's ranks file: one ``base64(token) rank`` line per token (what ``*.tiktoken`` files such as
cl100k_base.tiktoken hold, read by ``tiktoken.load.load_tiktoken_bpe``).

tiktoken stores no merge list: a token's id *is* its merge rank, and encoding repeatedly joins the
adjacent pair whose concatenation has the lowest rank. So a vocabulary can be written this way only
when its merges are exactly the ones that rule recovers from the ids (true for tokenizers trained
by ``BPETokenizer.train``, whose merge i makes id 256 + i); ``save_tiktoken`` checks it and refuses
otherwise. The format holds neither the pre-tokenizer pattern nor special tokens: we write them to a
sidecar ``<name>.tiktoken.json``, and ``load_tiktoken`` needs it (or both as arguments).
"""
from __future__ import annotations

import base64
import binascii
import heapq
import json
from pathlib import Path

from .bpe import BPETokenizer
from .formats import _from_sidecar, _sidecar, build, read_json


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's merge rule on ``token`` using only ranks below ``max_rank``: join the adjacent
    pair whose concatenation has the lowest rank (leftmost on a tie) until none is left.

    With a heap of candidate pairs, so a stranger's file with very long tokens costs
    O(n log n) per token, not the O(n^2) of rescanning every pair after each join."""
    n = len(token)
    nxt = list(range(1, n + 1))   # part starting at i ends at nxt[i]
    prv = list(range(-1, n - 1))  # start of the part before the one starting at i
    alive = [True] * n
    heap: list[tuple[int, int, int, int]] = []

    def push(i: int) -> None:     # the pair (part at i, the part after it)
        j = nxt[i]
        if j < n:
            r = ranks.get(token[i:nxt[j]], max_rank)
            if r < max_rank:
                heapq.heappush(heap, (r, i, j, nxt[j]))

    for i in range(n - 1):
        push(i)
    while heap:
        _, i, j, k = heapq.heappop(heap)
        if not (alive[i] and alive[j] and nxt[i] == j and nxt[j] == k):
            continue              # stale: one of its parts has been joined since
        alive[j] = False
        nxt[i] = k
        if k < n:
            prv[k] = i
        if prv[i] >= 0:
            push(prv[i])
        push(i)
    parts, i = [], 0
    while i < n:
        parts.append(token[i:nxt[i]])
        i = nxt[i]
    return parts


def merges_from_ranks(ranks: dict[bytes, int], where: str = "ranks") -> list[tuple[bytes, bytes]]:
    """The merge list a tiktoken rank table means, in rank order (as HF and minbpe recover it):
    each multi-byte token must split, under the lower ranks, into exactly two tokens.
    ValueError naming ``where`` for a missing single byte or a token no merge builds."""
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(f"{where}: single bytes missing from the vocabulary: {missing[:10]}")
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise ValueError(f"{where}: token {token!r} (rank {rank}) is not one merge of two lower-ranked tokens "
                             f"(tiktoken's rule splits it as {parts[:6]})")
        merges.append((parts[0], parts[1]))
    return merges


def sidecar_path(path) -> Path:
    """``tok.tiktoken`` -> ``tok.tiktoken.json`` (pattern and special tokens)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_tiktoken(tok: BPETokenizer, path) -> None:
    """Write ``tok``'s ranks as a ``.tiktoken`` file and its pattern and specials beside it.
    ValueError (writing nothing) when its merges are not the ones its ids mean to tiktoken."""
    path = Path(path)
    try:
        recovered = merges_from_ranks(tok.vocab, "vocabulary")
    except ValueError as e:
        raise ValueError(f"{path}: cannot save as .tiktoken, where ids are merge ranks: {e}") from None
    if recovered != list(tok.merges):
        k = next((k for k, (a, b) in enumerate(zip(recovered, tok.merges)) if a != b), min(len(recovered), len(tok.merges)))
        ours = tok.merges[k] if k < len(tok.merges) else None
        theirs = recovered[k] if k < len(recovered) else None
        raise ValueError(f"{path}: cannot save as .tiktoken: its ids do not order its merges as tiktoken assumes "
                         f"(merge #{k} is {ours!r}, the ids imply {theirs!r}); save as .json or a folder instead")
    lines = [f"{base64.b64encode(b).decode('ascii')} {i}" for b, i in sorted(tok.vocab.items(), key=lambda kv: kv[1])]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    sidecar_path(path).write_text(json.dumps(_sidecar(tok), ensure_ascii=True, indent=1) + "\n", encoding="ascii")


def read_ranks(path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` ranks file; ValueError naming the file and line for anything else."""
    path = Path(path)
    ranks, seen = {}, set()
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line:
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError("expected two fields")
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error) as e:
            raise ValueError(f"{path}: line {n} is not 'base64(token) rank' ({e}): {line[:80]!r}") from None
        if token in ranks or rank in seen or not token or rank < 0:
            raise ValueError(f"{path}: line {n}: empty or repeated token, or repeated or negative rank: {line[:80]!r}")
        ranks[token] = rank
        seen.add(rank)
    if not ranks:
        raise ValueError(f"{path}: empty; expected tiktoken ranks ('base64(token) rank' per line)")
    return ranks


def load_tiktoken(path, pattern: str | None = None, special_tokens: dict[str, int] | None = None) -> BPETokenizer:
    """Read a ``.tiktoken`` ranks file. Pattern and specials come from the arguments or, when both
    are None, from the sidecar ``<path>.json`` that ``save_tiktoken`` writes (an error without it:
    the ranks alone do not say how to split text)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    if pattern is None and special_tokens is None:
        side = sidecar_path(path)
        if not side.is_file():
            raise ValueError(f"{path}: a .tiktoken file holds no pre-tokenizer pattern or special tokens; expected "
                             f"them in {side.name} beside it, or call load_tiktoken(path, pattern=..., special_tokens=...)")
        pattern, special_tokens = _from_sidecar(read_json(side, "a tinygrad_lm .tiktoken sidecar"), side)
    ranks = read_ranks(path)
    return build(path, ranks, merges_from_ranks(ranks, str(path)), pattern or "gpt4", special_tokens or {})
