"""Byte-pair encoding kernels: apply merges to chunks (here), to whole texts (bpe_text.py),
and learn merges (bpe_train.py).

The readable versions of the algorithms are in tinygrad_lm/tokenizers/bpe.py
(``bpe_merge_reference``) and bpe_train.py (``train_reference``); tests check these kernels
give the same ids and the same merges. Everything here is integer arithmetic, so results are
the same on every machine.

Pairs are int64 keys ``(left << 32) | right``. A pair table is open addressing with linear
probing over a power-of-two array of keys (EMPTY = -1) and parallel value arrays, hashed by
Fibonacci hashing (multiply by 2^64/phi, keep the top bits): a lookup is a multiply, a shift
and usually one probe of a flat array, and lookups are most of the work here.

Compiled serially and with ``nogil`` (the trainer runs in a worker thread while Python draws
its progress bar). Not through ``_jit.py``, which also pins BLAS threads for the model kernels;
a tokenizer should not change them.
"""
import numba
import numpy as np

from tinygrad_lm.cache import numba_caching

EMPTY = -1
NO_RANK = np.int32(2**31 - 1)
HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
SMALL_CHUNK = 64  # chunks up to this many bytes merge by rescanning (no heap); most chunks are words


def _jit(fn):
    """A serial, nogil, disk-cached kernel (the cache folder: tinygrad_lm.cache)."""
    with numba_caching() as cache:
        return numba.njit(cache=cache, nogil=True)(fn)


# ---- the pair table ---------------------------------------------------------------------------

@_jit
def _slot(keys, key, bits):
    """The slot holding ``key``, or the empty slot where it belongs."""
    mask = (1 << bits) - 1
    i = np.int64((np.uint64(key) * HASH_MUL) >> np.uint64(64 - bits))
    while keys[i] != EMPTY and keys[i] != key:
        i = (i + 1) & mask
    return i


@_jit
def _pair(a, b):
    return (np.int64(a) << 32) | np.int64(b)


@_jit
def table_bits(n):
    """log2 of a table size that keeps ``n`` keys at most half full (at least 16 slots)."""
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    return bits


@_jit
def _grow(a, size):
    """A copy of ``a`` with room for at least ``size`` items (doubling)."""
    out = np.empty(max(size, 2 * a.size), a.dtype)
    out[:a.size] = a
    return out


# ---- encoding ---------------------------------------------------------------------------------

@_jit
def build_merge_table(left, right, bits):
    """Merge ranks by pair: ``keys`` and ``ranks`` arrays of 2**bits slots. Rank r is merge r
    (left[r], right[r]); a pair listed twice keeps its first (lowest) rank."""
    keys = np.full(1 << bits, EMPTY, np.int64)
    ranks = np.full(1 << bits, NO_RANK, np.int32)
    for r in range(left.size):
        key = _pair(left[r], right[r])
        i = _slot(keys, key, bits)
        if keys[i] == EMPTY:
            keys[i] = key
            ranks[i] = r
    return keys, ranks


@_jit
def _rank(keys, ranks, bits, a, b):
    return ranks[_slot(keys, _pair(a, b), bits)]  # an empty slot holds NO_RANK


@_jit
def _merge_small(tok, n, rk, keys, ranks, bits, merged):
    """Merge tok[:n] in place; returns the new length. Each round scans for the lowest rank
    (leftmost on a tie: ``<``), merges it, and closes the gap: O(n^2), fast for short words."""
    for j in range(n - 1):
        rk[j] = _rank(keys, ranks, bits, tok[j], tok[j + 1])
    while n > 1:
        best, at = NO_RANK, -1
        for j in range(n - 1):
            if rk[j] < best:
                best, at = rk[j], j
        if at < 0:
            break
        tok[at] = merged[best]
        n -= 1
        for j in range(at + 1, n):        # token at+1 is gone: shift the rest left
            tok[j] = tok[j + 1]
        for j in range(at + 1, n - 1):    # and the ranks of the pairs that start after it
            rk[j] = rk[j + 1]
        if at > 0:
            rk[at - 1] = _rank(keys, ranks, bits, tok[at - 1], tok[at])
        if at < n - 1:
            rk[at] = _rank(keys, ranks, bits, tok[at], tok[at + 1])
    return n


@_jit
def _heap_push(heap, size, item):
    """Min-heap of int64 items; returns the new size."""
    i = size
    heap[i] = item
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= heap[i]:
            break
        heap[parent], heap[i] = heap[i], heap[parent]
        i = parent
    return size + 1


@_jit
def _heap_pop(heap, size):
    """Remove the smallest item (returned) from a heap of ``size`` items; the new size is size - 1."""
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[i] <= heap[child]:
            break
        heap[i], heap[child] = heap[child], heap[i]
        i = child
    return top


@_jit
def _merge_long(tok, n, keys, ranks, bits, merged):
    """Merge tok[:n] in place for long chunks: a linked list of positions and a min-heap of
    (rank << 32 | position), so the lowest rank, then the leftmost position, comes first.
    A heap entry is stale when its position is gone or now starts another pair. O(n log n)."""
    nxt = np.arange(1, n + 1).astype(np.int32)
    prv = np.arange(-1, n - 1).astype(np.int32)
    rk = np.full(n, NO_RANK, np.int32)
    heap = np.empty(3 * n, np.int64)   # n - 1 at first, then at most two pushes per merge
    size = 0
    for j in range(n - 1):
        rk[j] = _rank(keys, ranks, bits, tok[j], tok[j + 1])
        if rk[j] != NO_RANK:
            size = _heap_push(heap, size, (np.int64(rk[j]) << 32) | j)
    while size > 0:
        item = _heap_pop(heap, size)
        size -= 1
        r, p = np.int32(item >> 32), np.int32(item & 0xFFFFFFFF)
        if rk[p] != r:
            continue
        q = nxt[p]                          # p and q merge into p
        tok[p] = merged[r]
        rk[q] = NO_RANK
        nxt[p] = nxt[q]
        if nxt[q] < n:
            prv[nxt[q]] = p
        rk[p] = _rank(keys, ranks, bits, tok[p], tok[nxt[p]]) if nxt[p] < n else NO_RANK
        if rk[p] != NO_RANK:
            size = _heap_push(heap, size, (np.int64(rk[p]) << 32) | p)
        if prv[p] >= 0:
            pp = prv[p]
            rk[pp] = _rank(keys, ranks, bits, tok[pp], tok[p])
            if rk[pp] != NO_RANK:
                size = _heap_push(heap, size, (np.int64(rk[pp]) << 32) | pp)
    m, p = 0, 0
    while p < n:
        tok[m] = tok[p]
        m += 1
        p = nxt[p]
    return m


@_jit
def _byte_tokens(buf, lo, n, byte_ids, tok):
    """tok[:m] = the ids of bytes buf[lo:lo + n], leaving out bytes without a token (id -1: a
    vocabulary may lack bytes that never occur in UTF-8 text, as SmolLM2's does). Returns m."""
    m = 0
    for j in range(n):
        t = byte_ids[buf[lo + j]]
        if t >= 0:
            tok[m] = t
            m += 1
    return m


@_jit
def encode_chunks(buf, offsets, byte_ids, keys, ranks, bits, merged):
    """BPE-encode every chunk buf[offsets[c]:offsets[c+1]] (UTF-8 bytes).

    byte_ids: (256,) the token id of each byte (-1: none; dropped). keys/ranks/bits: ``build_merge_table``.
    merged: (n_merges,) the id merge r produces. Returns (ids int32, out_offsets int64):
    chunk c's ids are ids[out_offsets[c]:out_offsets[c+1]]."""
    n_chunks = offsets.size - 1
    longest = 0
    for c in range(n_chunks):
        longest = max(longest, offsets[c + 1] - offsets[c])
    tok = np.empty(longest, np.int32)
    rk = np.empty(min(longest, SMALL_CHUNK), np.int32)
    out = np.empty(buf.size, np.int32)
    out_offsets = np.zeros(n_chunks + 1, np.int64)
    pos = 0
    for c in range(n_chunks):
        lo = offsets[c]
        n = offsets[c + 1] - lo
        n = _byte_tokens(buf, lo, n, byte_ids, tok)
        if n <= SMALL_CHUNK:
            n = _merge_small(tok, n, rk, keys, ranks, bits, merged)
        else:
            n = _merge_long(tok, n, keys, ranks, bits, merged)
        out[pos:pos + n] = tok[:n]
        pos += n
        out_offsets[c + 1] = pos
    return out[:pos].copy(), out_offsets
