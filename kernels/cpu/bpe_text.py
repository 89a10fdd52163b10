"""Whole-text BPE encoding for the named pre-tokenizer patterns: split, cache, merge in one pass.

The ``regex`` package splits text at ~13 MB/s on our 2-core machines, slower than tiktoken's
whole encode (~20 MB/s). So for the named patterns (tinygrad_lm/tokenizers/patterns.py) the
split is done here, over the text's code points, by a hand-written scanner per pattern that
returns where the regex's match starting at ``i`` would end. Each scanner follows its regex alternative by
alternative (the regex is quoted above it); tests check the chunks equal ``regex.findall``'s
on drawn Unicode text. Character classes come from a table built with the ``regex`` package
itself (``char_classes``), so ``\\p{L}``, ``\\p{N}`` and ``\\s`` mean exactly what they mean there.

Each chunk is then looked up in a cache local to the call (a repeated word costs a hash and a
compare), and merged by bpe.py's kernels the first time it is seen. ``count_chunks`` is the same
scan with counts instead of ids, for training.
"""
import numpy as np

from .bpe import EMPTY, HASH_MUL, SMALL_CHUNK, _byte_tokens, _grow, _jit, _merge_long, _merge_small

L, N, S = 1, 2, 4           # class bits: \p{L}, \p{N}, \s (a char with none of them is "other")
FOLD_SHIFT = 3              # bits 3..6: which of s d m t l v e r the char is, case-insensitively
FOLD_S, FOLD_D, FOLD_M, FOLD_T, FOLD_L, FOLD_V, FOLD_E, FOLD_R = 1, 2, 3, 4, 5, 6, 7, 8
CACHE_MAX_CHUNK = 256       # longer chunks (pattern "none") are merged every time, never cached

_CLASSES = None


def char_classes() -> np.ndarray:
    """(0x110000,) uint8: class bits of every code point, from the ``regex`` package (~0.1 s, once)."""
    global _CLASSES
    if _CLASSES is None:
        import regex
        every = "".join(map(chr, range(0x110000)))     # lone surrogates included: a str may hold them
        table = np.zeros(0x110000, np.uint8)
        for bit, cls in ((L, r"\p{L}+"), (N, r"\p{N}+"), (S, r"\s+")):
            for m in regex.finditer(cls, every):
                table[m.start():m.end()] |= bit
        for fold, letter in enumerate("sdmtlver", start=1):   # (?i:s) also matches U+017F, long s
            for m in regex.finditer(f"(?i:{letter})", every):
                table[m.start()] |= fold << FOLD_SHIFT
        _CLASSES = table
    return _CLASSES


@_jit
def _run(cps, cls, i, end, bit):
    """End of the run of chars with class ``bit`` starting at i (bit 0: "other")."""
    while i < end:
        c = cls[cps[i]] & 7
        if (c & bit) == 0 if bit else c != 0:
            break
        i += 1
    return i


@_jit
def _contraction(cps, i, end):
    """'s|'t|'re|'ve|'m|'ll|'d (case-sensitive): the end of the match at i, or -1."""
    if cps[i] != 39 or i + 1 >= end:
        return -1
    d = cps[i + 1]
    if d == 115 or d == 116 or d == 109 or d == 100:
        return i + 2
    if i + 2 < end:
        e = cps[i + 2]
        if (d == 114 and e == 101) or (d == 118 and e == 101) or (d == 108 and e == 108):
            return i + 3
    return -1


@_jit
def _gpt2_end(cps, cls, i, end):
    """'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"""
    k = _contraction(cps, i, end)
    if k >= 0:
        return k
    c = cls[cps[i]] & 7
    if cps[i] == 32 and i + 1 < end:         # " ?X+": a space then a run of one class
        nc = cls[cps[i + 1]] & 7
        if nc != S:
            return _run(cps, cls, i + 1, end, nc)
    if c != S:
        return _run(cps, cls, i, end, c)
    j = _run(cps, cls, i, end, S)
    if j == end:                              # \s+(?!\S) at the end of the text
        return end
    if j - i >= 2:                            # \s+(?!\S): all but the last, which goes with the next chunk
        return j - 1
    return j                                  # \s+


@_jit
def _gpt4_end(cps, cls, i, end):
    """'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+
    |\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s"""
    if cps[i] == 39 and i + 1 < end:
        f1 = cls[cps[i + 1]] >> FOLD_SHIFT
        if f1 == FOLD_S or f1 == FOLD_D or f1 == FOLD_M or f1 == FOLD_T:
            return i + 2
        if i + 2 < end:
            f2 = cls[cps[i + 2]] >> FOLD_SHIFT
            if (f1 == FOLD_L and f2 == FOLD_L) or (f1 == FOLD_V and f2 == FOLD_E) or (f1 == FOLD_R and f2 == FOLD_E):
                return i + 3
    c = cls[cps[i]] & 7
    if c == L:                                            # \p{L}++
        return _run(cps, cls, i, end, L)
    newline = cps[i] == 10 or cps[i] == 13
    if c != N and not newline and i + 1 < end and cls[cps[i + 1]] & 7 == L:
        return _run(cps, cls, i + 1, end, L)              # one non-letter, non-digit, non-newline + \p{L}++
    if c == N:                                            # \p{N}{1,3}+
        k = i + 1
        while k < end and k < i + 3 and cls[cps[k]] & 7 == N:
            k += 1
        return k
    start = -1
    if c == 0:
        start = i
    elif cps[i] == 32 and i + 1 < end and cls[cps[i + 1]] & 7 == 0:
        start = i + 1
    if start >= 0:                                        # " ?[^\s\p{L}\p{N}]++[\r\n]*+"
        k = _run(cps, cls, start, end, 0)
        while k < end and (cps[k] == 10 or cps[k] == 13):
            k += 1
        return k
    j = _run(cps, cls, i, end, S)
    if j == end:                                          # \s++$
        return end
    for k in range(j - 1, i - 1, -1):                     # \s*[\r\n]: up to the run's last newline
        if cps[k] == 10 or cps[k] == 13:
            return k + 1
    if j - i >= 2:                                        # \s+(?!\S)
        return j - 1
    return i + 1                                          # \s


@_jit
def _digits_end(cps, cls, i, end):
    """\\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?![^\\s\\p{N}])|\\s+"""
    c = cls[cps[i]] & 7
    if c == N:
        return i + 1
    k = _contraction(cps, i, end)
    if k >= 0:
        return k
    if cps[i] == 32 and i + 1 < end:
        nc = cls[cps[i + 1]] & 7
        if nc == L or nc == 0:
            return _run(cps, cls, i + 1, end, nc)
    if c == L or c == 0:
        return _run(cps, cls, i, end, c)
    j = _run(cps, cls, i, end, S)
    if j == end or cls[cps[j]] & 7 == N:                  # a digit ends the run like the end of text
        return j
    if j - i >= 2:
        return j - 1
    return j


@_jit
def _chunk_end(cps, cls, i, end, pattern):
    """Where the chunk starting at i ends. pattern: 0 "none", 1 "gpt2", 2 "gpt4", 3 "digits"
    (bpe.TEXT_PATTERN_IDS)."""
    if pattern == 1:
        return _gpt2_end(cps, cls, i, end)
    if pattern == 2:
        return _gpt4_end(cps, cls, i, end)
    if pattern == 3:
        return _digits_end(cps, cls, i, end)
    return end                                            # "none": the whole piece


@_jit
def split_text(cps, cls, pattern):
    """Chunk boundaries of one text (for tests): (n_chunks + 1,) int64 offsets into cps."""
    out = np.zeros(cps.size + 1, np.int64)
    n, i = 0, 0
    while i < cps.size:
        i = _chunk_end(cps, cls, i, cps.size, pattern)
        n += 1
        out[n] = i
    return out[:n + 1].copy()


@_jit
def _utf8(cps, lo, hi, out):
    """UTF-8 bytes of cps[lo:hi] into out (lone surrogates as 3 bytes, like 'surrogatepass')."""
    n = 0
    for k in range(lo, hi):
        c = cps[k]
        if c < 0x80:
            out[n] = c
            n += 1
        elif c < 0x800:
            out[n] = 0xC0 | (c >> 6)
            out[n + 1] = 0x80 | (c & 0x3F)
            n += 2
        elif c < 0x10000:
            out[n] = 0xE0 | (c >> 12)
            out[n + 1] = 0x80 | ((c >> 6) & 0x3F)
            out[n + 2] = 0x80 | (c & 0x3F)
            n += 3
        else:
            out[n] = 0xF0 | (c >> 18)
            out[n + 1] = 0x80 | ((c >> 12) & 0x3F)
            out[n + 2] = 0x80 | ((c >> 6) & 0x3F)
            out[n + 3] = 0x80 | (c & 0x3F)
            n += 4
    return n


@_jit
def _rehash_entries(e_hash, n_entries, cbits):
    """A chunk table of 2**cbits slots for the first n_entries entries (a slot is the top bits of
    the chunk's hash; ``e_hash`` keeps the hash shifted right by one, which keeps those bits)."""
    table = np.full(1 << cbits, EMPTY, np.int64)
    for e in range(n_entries):
        s = np.int64((np.uint64(e_hash[e]) << np.uint64(1)) >> np.uint64(64 - cbits))
        while table[s] != EMPTY:
            s = (s + 1) & ((1 << cbits) - 1)
        table[s] = e
    return table


@_jit
def _double_entries(e_hash, e_text, e_len, n_entries, cbits):
    """The chunk table grown to 2**(cbits + 1) slots, rehashed, with room for as many entries:
    (cbits, table, e_hash, e_text, e_len); a caller grows its own per-entry arrays to 2**(cbits - 1)."""
    cbits += 1
    cap = 1 << (cbits - 1)
    return cbits, _rehash_entries(e_hash, n_entries, cbits), _grow(e_hash, cap), _grow(e_text, cap), _grow(e_len, cap)


@_jit
def _find_chunk(cps, i, j, table, e_hash, e_text, e_len, cbits):
    """Look the chunk cps[i:j] up in a call's chunk table (open addressing, keyed by a hash of its
    code points). Returns (its key, the slot where it is or would go, its entry or -1)."""
    n = j - i
    h = np.uint64(n)
    for k in range(i, j):
        h = (h ^ np.uint64(cps[k])) * HASH_MUL
    key = np.int64(h >> np.uint64(1))
    slot = np.int64(h >> np.uint64(64 - cbits))
    while table[slot] != EMPTY:
        e = table[slot]
        if e_hash[e] == key and e_len[e] == n:
            t = e_text[e]
            same = True
            for k in range(n):
                if cps[t + k] != cps[i + k]:
                    same = False
                    break
            if same:
                return key, slot, e
        slot = (slot + 1) & ((1 << cbits) - 1)
    return key, slot, -1


@_jit
def encode_text(cps, ends, cls, pattern, byte_ids, keys, ranks, bits, merged):
    """BPE ids of texts given as code points back to back: piece p is cps[ends[p-1]:ends[p]]
    (chunks never cross a piece's end). Returns (ids int32, id_ends int64 per piece).

    The cache maps a chunk (hash of its code points, then compared) to where its ids were first
    written in the output; entries point into cps and the output, so nothing is copied."""
    out = np.empty(cps.size + 16, np.int32)              # grows if the ids outnumber the chars
    id_ends = np.zeros(ends.size, np.int64)
    tok = np.empty(256, np.int32)                         # one chunk's bytes, then its tokens
    buf = np.empty(256, np.int32)
    rk = np.empty(SMALL_CHUNK, np.int32)

    cbits = 12
    table = np.full(1 << cbits, EMPTY, np.int64)          # slot -> entry
    e_hash = np.empty(1 << (cbits - 1), np.int64)
    e_text = np.empty(1 << (cbits - 1), np.int64)        # chunk start in cps
    e_len = np.empty(1 << (cbits - 1), np.int64)
    e_out = np.empty(1 << (cbits - 1), np.int64)         # first ids in out
    e_n = np.empty(1 << (cbits - 1), np.int64)
    n_entries = 0

    pos = 0
    start = 0
    for p in range(ends.size):
        i = start
        while i < ends[p]:
            j = _chunk_end(cps, cls, i, ends[p], pattern)
            n = j - i
            key, slot = np.int64(0), np.int64(0)
            if n <= CACHE_MAX_CHUNK:
                key, slot, found = _find_chunk(cps, i, j, table, e_hash, e_text, e_len, cbits)
                if found >= 0:
                    o, m = e_out[found], e_n[found]
                    if pos + m > out.size:
                        out = _grow(out, pos + m)
                    out[pos:pos + m] = out[o:o + m]
                    pos += m
                    i = j
                    continue
            if 4 * n > buf.size:
                buf = np.empty(4 * n, np.int32)
                tok = np.empty(4 * n, np.int32)
            nb = _byte_tokens(buf, 0, _utf8(cps, i, j, buf), byte_ids, tok)
            if nb <= SMALL_CHUNK:
                m = _merge_small(tok, nb, rk, keys, ranks, bits, merged)
            else:
                m = _merge_long(tok, nb, keys, ranks, bits, merged)
            if pos + m > out.size:
                out = _grow(out, pos + m)
            out[pos:pos + m] = tok[:m]
            if n <= CACHE_MAX_CHUNK:
                e = n_entries
                table[slot] = e
                e_hash[e], e_text[e], e_len[e], e_out[e], e_n[e] = key, i, n, pos, m
                n_entries += 1
                if 2 * n_entries >= table.size:           # keep the table at most half full
                    cbits, table, e_hash, e_text, e_len = _double_entries(e_hash, e_text, e_len, n_entries, cbits)
                    e_out = _grow(e_out, 1 << (cbits - 1))
                    e_n = _grow(e_n, 1 << (cbits - 1))
            pos += m
            i = j
        id_ends[p] = pos
        start = ends[p]
    return out[:pos].copy(), id_ends



@_jit
def count_chunks(cps, cls, pattern):
    """The distinct chunks of one text and how often each occurs, for training: (starts, lengths,
    counts) int64, in order of first occurrence (a chunk is cps[starts[k]:starts[k]+lengths[k]])."""
    cbits = 12
    table = np.full(1 << cbits, EMPTY, np.int64)          # slot -> entry
    e_hash = np.empty(1 << (cbits - 1), np.int64)
    e_text = np.empty(1 << (cbits - 1), np.int64)
    e_len = np.empty(1 << (cbits - 1), np.int64)
    e_count = np.empty(1 << (cbits - 1), np.int64)
    n_entries = 0
    i = 0
    while i < cps.size:
        j = _chunk_end(cps, cls, i, cps.size, pattern)
        n = j - i
        key, slot, found = _find_chunk(cps, i, j, table, e_hash, e_text, e_len, cbits)
        if found >= 0:
            e_count[found] += 1
        else:
            e = n_entries
            table[slot] = e
            e_hash[e], e_text[e], e_len[e], e_count[e] = key, i, n, 1
            n_entries += 1
            if 2 * n_entries >= table.size:               # keep the table at most half full
                cbits, table, e_hash, e_text, e_len = _double_entries(e_hash, e_text, e_len, n_entries, cbits)
                e_count = _grow(e_count, 1 << (cbits - 1))
        i = j
    return e_text[:n_entries].copy(), e_len[:n_entries].copy(), e_count[:n_entries].copy()
