"""Learning BPE merges with the incremental algorithm, for tinygrad_lm/tokenizers/bpe_train.py
(whose ``train_reference`` is the textbook version; tests check both give the same merges).

State: the unique chunks, tokens stored back to back (chunk c in tok[start[c]:start[c]+length[c]],
shrinking in place as merges apply), each with its count (weight). A pair table maps every pair
seen to its live count (summed over chunk weights) and the head of a linked list of the chunks
it was seen in (a chunk may be listed after the pair left it: the merge then finds nothing
there). A lazy max-heap holds (count, pair) entries that may be stale: an entry's count is at
least the pair's live count unless a newer entry holds that; a popped entry whose count is not
the live one is pushed back with the live count. Merging pair (a, b) visits only the chunks on
its list and updates the counts of the pairs around each occurrence.

Tie-break: the highest count wins; among equal counts the smallest pair (a, b) of token ids,
compared as (a, then b). Since ids count up in the order tokens are made, this prefers the
older tokens, and it needs no hash order or insertion order, so every machine agrees.

Byte strings: a merge whose bytes equal a token that already exists (a + bc vs ab + c)
produces that token (as HF tokenizers' trainer does) instead of a second id with the same bytes.
Token bytes are compared by a polynomial hash over the bytes and, on a hash match, byte by byte.
"""
import numpy as np

from .bpe import EMPTY, _grow, _jit, _pair, _slot, table_bits

BYTE_HASH_BASE = np.uint64(1000003)


@_jit
def _rehash(keys, cnt, head, last, mark, bits):
    """Move the pair table to one of 2**bits slots."""
    nkeys = np.full(1 << bits, EMPTY, np.int64)
    ncnt = np.zeros(1 << bits, np.int64)
    nhead = np.full(1 << bits, -1, np.int32)
    nlast = np.full(1 << bits, -1, np.int32)
    nmark = np.zeros(1 << bits, np.int32)
    for i in range(keys.size):
        if keys[i] != EMPTY:
            j = _slot(nkeys, keys[i], bits)
            nkeys[j], ncnt[j], nhead[j], nlast[j], nmark[j] = keys[i], cnt[i], head[i], last[i], mark[i]
    return nkeys, ncnt, nhead, nlast, nmark


@_jit
def _better(c1, k1, c2, k2):
    """Does heap entry (c1, k1) come before (c2, k2)? Higher count, then smaller pair."""
    return c1 > c2 or (c1 == c2 and k1 < k2)


@_jit
def _push(hc, hk, size, c, k):
    i = size
    hc[i], hk[i] = c, k
    while i > 0:
        parent = (i - 1) >> 1
        if not _better(hc[i], hk[i], hc[parent], hk[parent]):
            break
        hc[i], hc[parent] = hc[parent], hc[i]
        hk[i], hk[parent] = hk[parent], hk[i]
        i = parent
    return size + 1


@_jit
def _pop(hc, hk, size):
    """Remove the best entry (it is left in hc[size-1], hk[size-1] for the caller to read)."""
    size -= 1
    hc[0], hc[size] = hc[size], hc[0]
    hk[0], hk[size] = hk[size], hk[0]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and _better(hc[child + 1], hk[child + 1], hc[child], hk[child]):
            child += 1
        if not _better(hc[child], hk[child], hc[i], hk[i]):
            break
        hc[i], hc[child] = hc[child], hc[i]
        hk[i], hk[child] = hk[child], hk[i]
        i = child
    return size


@_jit
def _spell(t, left, right, out):
    """Write token t's bytes into out (as byte values); returns their number. Tokens below 256
    are bytes; token t >= 256 is left[t] followed by right[t]."""
    stack = np.empty(64, np.int64)
    top, n = 1, 0
    stack[0] = t
    while top > 0:
        top -= 1
        x = stack[top]
        if x < 256:
            out[n] = x
            n += 1
        else:
            if top + 2 > stack.size:
                stack = _grow(stack, top + 2)
            stack[top] = right[x]      # pushed first, popped second
            stack[top + 1] = left[x]
            top += 2
    return n



@_jit
def _add_count(key, w, c, keys, cnt, head, last, bits, used, node_chunk, node_next, n_nodes):
    """Pair ``key`` occurs w more times, in chunk c: count it (a new slot if it is new) and list
    chunk c under it once. Returns the updated (used slots, list nodes)."""
    s = _slot(keys, key, bits)
    if keys[s] == EMPTY:
        keys[s] = key
        used += 1
    cnt[s] += w
    if last[s] != c:
        node_chunk[n_nodes], node_next[n_nodes] = c, head[s]
        head[s], last[s] = n_nodes, c
        n_nodes += 1
    return used, n_nodes


@_jit
def _move_count(old, key, w, c, keys, cnt, head, last, bits, used, node_chunk, node_next, n_nodes,
                touched, n_touched):
    """A merge turned w occurrences of pair ``old`` in chunk c into pair ``key``: move the count
    and note ``key`` for the heap. Returns the updated (used slots, list nodes, touched keys)."""
    cnt[_slot(keys, old, bits)] -= w
    used, n_nodes = _add_count(key, w, c, keys, cnt, head, last, bits, used, node_chunk, node_next, n_nodes)
    touched[n_touched] = key
    return used, n_nodes, n_touched + 1


@_jit
def train_merges(tok, start, weight, n_new, progress):
    """Learn merges until ``n_new`` new tokens exist (or no pair is left).

    tok: int32 byte values of the unique chunks back to back; start: int64 (C + 1,) chunk
    boundaries; weight: int64 (C,) each chunk's count. progress[0] is set to the number of new
    tokens made so far (read by another thread). Returns (merges (k, 3) int32 rows
    (a, b, new id), k); new ids count up from 256, and k > n_new when a merge reproduced an
    existing token."""
    n_chunks = weight.size
    length = (start[1:] - start[:-1]).astype(np.int32)
    bits = table_bits(min(max(tok.size, 1024), 256 * 256))   # the first pairs are byte pairs
    keys = np.full(1 << bits, EMPTY, np.int64)
    cnt = np.zeros(1 << bits, np.int64)
    head = np.full(1 << bits, -1, np.int32)     # first node of the pair's chunk list
    last = np.full(1 << bits, -1, np.int32)     # the chunk last put on it (no repeats in a row)
    mark = np.zeros(1 << bits, np.int32)        # the merge that last pushed the pair on the heap
    node_chunk = np.empty(max(tok.size, 16), np.int32)
    node_next = np.empty(max(tok.size, 16), np.int32)
    n_nodes = 0
    used = 0

    # Tokens: bytes (0..255) then merges. Children, length, hash and base**length of each, and
    # a table byte-hash -> token for finding a merge that spells an existing token.
    n_tok = 256 + n_new
    left = np.zeros(n_tok, np.int32)
    right = np.zeros(n_tok, np.int32)
    tlen = np.ones(n_tok, np.int64)
    thash = np.zeros(n_tok, np.uint64)
    tpow = np.zeros(n_tok, np.uint64)
    tbits = table_bits(n_tok)
    spelled = np.full(1 << tbits, EMPTY, np.int64)   # keys: byte hashes >> 1; values: ids
    spelled_id = np.zeros(1 << tbits, np.int32)
    for t in range(256):
        thash[t] = np.uint64(t + 1)
        tpow[t] = BYTE_HASH_BASE
    buf_a = np.empty(16, np.int64)
    buf_b = np.empty(16, np.int64)

    # Count every adjacent pair in every chunk.
    for c in range(n_chunks):
        lo, w = start[c], weight[c]
        for i in range(length[c] - 1):
            used, n_nodes = _add_count(_pair(tok[lo + i], tok[lo + i + 1]), w, c, keys, cnt, head, last, bits,
                                       used, node_chunk, node_next, n_nodes)
    hc = np.empty(max(used, 16), np.int64)
    hk = np.empty(max(used, 16), np.int64)
    hsize = 0
    for s in range(keys.size):
        if keys[s] != EMPTY and cnt[s] > 0:
            hsize = _push(hc, hk, hsize, cnt[s], keys[s])

    merges = np.empty((n_new + 16, 3), np.int32)
    n_merges = 0
    made = 0
    seen = np.zeros(n_chunks, np.int32)       # the merge (1-based) that last visited the chunk
    touched = np.empty(16, np.int64)
    while made < n_new and hsize > 0:
        # The best pair: pop until an entry's count is the live one.
        hsize = _pop(hc, hk, hsize)
        c0, key = hc[hsize], hk[hsize]
        s = _slot(keys, key, bits)
        if cnt[s] != c0:
            if cnt[s] > 0:
                hsize = _push(hc, hk, hsize, cnt[s], key)
            continue
        a, b = np.int32(key >> 32), np.int32(key & 0xFFFFFFFF)

        # Its token: an existing one with the same bytes, else a new id.
        h = thash[a] * tpow[b] + thash[b]
        hkey = np.int64(h >> np.uint64(1))          # >= 0, never EMPTY
        new = -1
        j = _slot(spelled, hkey, tbits)
        while spelled[j] != EMPTY:
            t = spelled_id[j]
            if spelled[j] == hkey and tlen[t] == tlen[a] + tlen[b]:
                need = tlen[t]
                if buf_a.size < need:
                    buf_a = np.empty(2 * need, np.int64)
                    buf_b = np.empty(2 * need, np.int64)
                _spell(t, left, right, buf_a)
                na = _spell(a, left, right, buf_b)
                _spell(b, left, right, buf_b[na:])
                if np.all(buf_a[:need] == buf_b[:need]):
                    new = t
                    break
            j = (j + 1) & ((1 << tbits) - 1)
        if new < 0:
            new = 256 + made
            made += 1
            left[new], right[new] = a, b
            tlen[new] = tlen[a] + tlen[b]
            thash[new], tpow[new] = h, tpow[a] * tpow[b]
            spelled[j], spelled_id[j] = hkey, new   # j: the empty slot the probe ended on
        if n_merges == merges.shape[0]:
            grown = np.empty((2 * n_merges, 3), np.int32)
            grown[:n_merges] = merges
            merges = grown
        merges[n_merges, 0], merges[n_merges, 1], merges[n_merges, 2] = a, b, new
        n_merges += 1
        stamp = np.int32(n_merges)

        # Room for what this merge can add: two new pairs (and list nodes) per occurrence.
        bound = 0
        node = head[s]
        while node >= 0:
            bound += 2 * length[node_chunk[node]]
            node = node_next[node]
        if 2 * (used + bound) > keys.size:
            nbits = bits
            while 2 * (used + bound) > (1 << nbits):
                nbits += 1
            keys, cnt, head, last, mark = _rehash(keys, cnt, head, last, mark, nbits)
            bits = nbits
            s = _slot(keys, key, bits)
        if n_nodes + bound > node_chunk.size:
            node_chunk = _grow(node_chunk, n_nodes + bound)
            node_next = _grow(node_next, n_nodes + bound)
        if bound > touched.size:
            touched = np.empty(2 * bound, np.int64)
        n_touched = 0

        # Merge every occurrence, left to right in each chunk on the pair's list. Writing the
        # result in place (j <= i) means "prev" is the already merged left neighbour, so
        # a b a b -> AB AB counts (AB, AB) once and never the (b, a) in between.
        node = head[s]
        while node >= 0:
            c = node_chunk[node]
            node = node_next[node]
            if seen[c] == stamp:
                continue
            seen[c] = stamp
            lo, n, w = start[c], length[c], weight[c]
            i = 0
            jw = 0
            while i < n:
                x = tok[lo + i]
                if i + 1 < n and x == a and tok[lo + i + 1] == b:
                    if jw > 0:          # (prev, a) becomes (prev, new)
                        prev = tok[lo + jw - 1]
                        used, n_nodes, n_touched = _move_count(
                            _pair(prev, a), _pair(prev, new), w, c, keys, cnt, head, last, bits, used,
                            node_chunk, node_next, n_nodes, touched, n_touched)
                    if i + 2 < n:       # (b, next) becomes (new, next)
                        nx = tok[lo + i + 2]
                        used, n_nodes, n_touched = _move_count(
                            _pair(b, nx), _pair(new, nx), w, c, keys, cnt, head, last, bits, used,
                            node_chunk, node_next, n_nodes, touched, n_touched)
                    tok[lo + jw] = new
                    i += 2
                else:
                    tok[lo + jw] = x
                    i += 1
                jw += 1
            length[c] = jw
        cnt[s] = 0          # every occurrence is merged
        head[s] = -1

        # The pairs that gained count go on the heap with their live counts, once each.
        if hsize + n_touched > hc.size:
            hc = _grow(hc, hsize + n_touched)
            hk = _grow(hk, hsize + n_touched)
        for t in range(n_touched):
            s2 = _slot(keys, touched[t], bits)
            if mark[s2] != stamp and cnt[s2] > 0:
                mark[s2] = stamp
                hsize = _push(hc, hk, hsize, cnt[s2], touched[t])
        progress[0] = made
    return merges[:n_merges].copy(), n_merges
