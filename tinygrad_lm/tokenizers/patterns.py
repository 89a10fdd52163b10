"""Pre-tokenizer patterns: how text is cut into chunks before byte-pair merging.

BPE never merges across a chunk boundary, so the pattern decides what a token can span: with
"gpt2" a word keeps its leading space (" the") but never swallows punctuation or digits.
Patterns are compiled with the ``regex`` package (not ``re``): they need ``\\p{L}`` / ``\\p{N}``
(Unicode letters / numbers) and possessive quantifiers.

Names (``resolve_pattern``):

* ``"gpt2"``: GPT-2's pattern (its ``encoder.py``, also HF tokenizers' ByteLevel pre-tokenizer):
  contractions, optional space + letters, optional space + numbers, optional space + other
  symbols, whitespace.
* ``"gpt4"``: cl100k_base's (GPT-4's), exactly as tiktoken 0.14 spells it: contractions in
  any case, numbers in groups of at most three digits, newlines kept apart from other spaces.
* ``"digits"`` (alias ``"smollm"``): every number character alone, then the GPT-2 pattern on
  the text between them. SmolLM2's tokenizer.json does this as two steps (``Digits(individual_digits
  =True)`` then ``ByteLevel``), llama.cpp as its "smollm" pre-tokenizer; here it is one regex
  that gives the same chunks (the digit alternative comes first, and a whitespace run counts a
  following digit as its end, as it would at the end of a piece).
* ``"none"``: no split; the whole text (between special tokens) is one chunk, as in minbpe's
  BasicTokenizer. Merges may then span words, and training costs a pass over the text per merge.
* anything else: used as a regex itself (a ValueError if it does not compile, or if it is an
  unknown plain name such as "gpt3"). Text between its matches is kept as chunks too.

The regexes here define the patterns. Encoding and training do not run them for the named ones:
kernels/cpu/bpe_text.py has a hand-written scanner per pattern (4 MB in 0.06 s against 0.31 s for
``regex.findall``), tested to cut exactly where ``regex.findall`` does. HF tokenizers reads
``\\p{N}{1,3}+`` differently (formats.hf_regex spells GPT4 for it).
"""
from __future__ import annotations

import regex

# GPT-2 (openai/gpt-2 src/encoder.py). tiktoken's r50k_base spells it with possessive quantifiers
# ('(?:[sdmt]|ll|ve|re)| ?\p{L}++|...|\s++$|\s+(?!\S)|\s); the chunks are the same.
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# cl100k_base, from tiktoken_ext/openai_public.py (tiktoken 0.14).
GPT4 = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
        r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")

# One number character per chunk, then GPT-2 on the rest. "(?![^\s\p{N}])" is GPT-2's "(?!\S)"
# with a digit treated like the end of the text: "a  3" -> "a", "  ", "3", as the two-step split gives.
DIGITS = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

# The whole text as one chunk (encode skips the regex for the name "none"; the string is what
# files store, and it means the same in every regex engine).
NONE = r"""[\s\S]+"""

PATTERNS = {"gpt2": GPT2, "gpt4": GPT4, "digits": DIGITS, "smollm": DIGITS, "none": NONE}
PATTERN_NAMES = tuple(PATTERNS)


def resolve_pattern(pattern: str) -> tuple[str, str | None]:
    """``(regex string, name)`` for a pattern name or a regex string (name None for a regex).

    ValueError for a plain word that is not a known name (a typo like "gpt3" must not silently
    become a regex matching the letters g, p, t, 3) and for a regex that does not compile."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a pre-tokenizer pattern is a name ({', '.join(PATTERN_NAMES)}) or a regex string, "
                         f"got {pattern!r}")
    if pattern in PATTERNS:
        return PATTERNS[pattern], pattern
    if regex.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", pattern):
        raise ValueError(f"unknown pre-tokenizer pattern {pattern!r}; choose one of {', '.join(PATTERN_NAMES)}, "
                         "or pass a regex string")
    compile_pattern(pattern)  # fail now, with the pattern named, rather than at the first encode
    return pattern, None


def compile_pattern(pattern: str) -> regex.Pattern:
    """Compile a regex string with the ``regex`` package; ValueError naming it if it is invalid."""
    try:
        return regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"invalid pre-tokenizer regex {pattern!r}: {e}") from None


def make_splitter(pattern: str, name: str | None = None):
    """``split(text) -> list[str]``: the chunks of ``text``, in order, joining back to ``text``.

    A named pattern matches every character, so ``findall`` alone is the split (the fast path:
    one C call). A regex of the user's may skip text (``\\w+`` skips spaces): the text between
    its matches is kept as chunks of its own, as HF tokenizers' ``Split(behavior="isolated")``
    does, so nothing is ever lost; empty matches are dropped."""
    if name == "none":
        return lambda text: [text] if text else []
    compiled = compile_pattern(pattern)
    if name is not None:
        return compiled.findall

    def split(text: str) -> list[str]:
        chunks, end = [], 0
        for m in compiled.finditer(text):
            if m.start() > end:
                chunks.append(text[end:m.start()])
            if m.end() > m.start():
                chunks.append(m.group())
            end = max(end, m.end())
        if end < len(text):
            chunks.append(text[end:])
        return chunks
    return split


def blocks(text: str, size: int):
    """``text`` in pieces of about ``size`` characters, cut where every named pattern but "none" has
    a chunk boundary whatever surrounds it: after a newline with a non-space on both sides ("x\\ny"). A
    chunk holding that newline ends there (it is whitespace only, or gpt4's punctuation run plus
    newlines), and the match at "y" starts afresh, with no lookbehind: the regex cuts there too.
    Encoding and counting a block at a time keep their memory bounded on a long text."""
    start = 0
    while len(text) - start > size:
        p = text.find("\n", start + size)
        while p != -1 and not (p + 1 < len(text) and not text[p - 1].isspace() and not text[p + 1].isspace()):
            p = text.find("\n", p + 1)
        if p == -1:
            break
        yield text[start:p + 1]
        start = p + 1
    yield text[start:]
