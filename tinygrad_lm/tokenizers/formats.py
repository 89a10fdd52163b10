"""BPE tokenizer files: HF ``tokenizer.json``, GPT-2's ``vocab.json`` + ``merges.txt`` folder,
and (in sibling modules) tiktoken ranks and GGUF. Formats live at the edge: ``BPETokenizer``
knows only bytes, ids and merges; this module translates spellings once, at save and load time.

    save_tokenizer(tok, "tok.json")      # HF tokenizer.json (tokenizers.Tokenizer.from_file reads it)
    save_tokenizer(tok, "tok.tiktoken")  # tiktoken ranks + tok.tiktoken.json (pattern, specials)
    save_tokenizer(tok, "tok_dir")       # vocab.json + merges.txt + bpe.json (pattern, specials)

Reading is ``load_tokenizer`` in the package, which also takes ``.gguf`` files and our own
char/byte/bpe JSON. Every reader checks what it reads and raises one ValueError naming the
file and what was expected; nothing here unpickles or evaluates anything.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import regex

from .bpe import BPETokenizer
from .patterns import PATTERNS

SIDECAR_FORMAT = "tinygrad_lm.bpe"  # marks our small JSON of pattern + specials (bpe.json, *.tiktoken.json)


# --- GPT-2's byte <-> unicode table ---------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte value to one printable character (openai/gpt-2 encoder.py).

    Why: vocab.json, merges.txt, tokenizer.json and GGUF files store byte-level tokens as *text*,
    and merges.txt separates a pair with a space. Raw bytes would not do: a token may be half
    of a UTF-8 character (not valid text), and bytes like " " or "\\n" would break the line and
    space separators. So each byte gets a visible stand-in: the 188 printable Latin-1 bytes
    ("!".."~", "¡".."¬", "®".."ÿ") stand for themselves, and the other 68 (controls, space,
    DEL, NBSP, soft hyphen) map in byte order to U+0100, U+0101, ... Hence space (0x20) is "Ġ"
    (U+0120) and newline (0x0A) is "Ċ" (U+010A): " the" is spelled "Ġthe".
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@functools.lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of ``bytes_to_unicode``: stand-in character -> byte value."""
    return {c: b for b, c in bytes_to_unicode().items()}


def spell(token: bytes) -> str:
    """A token's bytes in GPT-2's byte-level spelling (b" the" -> "Ġthe")."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def unspell(text: str, where: str) -> bytes:
    """GPT-2 byte-level spelling -> bytes; ValueError naming ``where`` for a character that is
    not one of the 256 stand-ins (the file is not byte-level, e.g. SentencePiece's "▁the")."""
    inverse = unicode_to_bytes()
    try:
        return bytes(inverse[c] for c in text)
    except KeyError as e:
        raise ValueError(f"{where}: token {text!r} is not in GPT-2's byte-level spelling "
                         f"(character {e.args[0]!r}); only byte-level BPE vocabularies are supported") from None


# --- choosing the format ----------------------------------------------------------------------------
def save_tokenizer(tok, path) -> None:
    """Write ``tok`` in the format its path names: ``*.json`` -> HF tokenizer.json, ``*.tiktoken``
    -> tiktoken ranks (+ ``<path>.json`` sidecar), an existing folder or a name without suffix ->
    GPT-2 vocab.json + merges.txt (+ bpe.json). Char and byte tokenizers have one format, our own
    JSON (``*.json`` only). ValueError for any other name."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not isinstance(tok, BPETokenizer):
        if suffix != ".json":
            raise ValueError(f"{path}: a {type(tok).__name__} is saved as our own JSON; use a *.json name")
        from .base import Tokenizer
        Tokenizer.save(tok, path)  # the base method: BPETokenizer.save may route here, never loop
        return
    if suffix == ".json":
        save_hf_json(tok, path)
    elif suffix == ".tiktoken":
        from .tiktoken_file import save_tiktoken
        save_tiktoken(tok, path)
    elif path.is_dir() or suffix == "":
        save_gpt2_folder(tok, path)
    else:
        raise ValueError(f"{path}: cannot tell the tokenizer format from the name; use *.json (HF tokenizer.json), "
                         "*.tiktoken (tiktoken ranks) or a folder (GPT-2 vocab.json + merges.txt)")


def read_json(path: Path, what: str):
    """Parse a JSON file; ValueError naming it and ``what`` it should have been."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not {what} (not valid UTF-8 JSON: {e})") from None


def _pattern_arg(regex_str: str) -> str:
    # Hand BPETokenizer a known pattern by name, so pattern_name survives a round trip
    # (also when tokenizer.json holds it in Oniguruma's spelling, see hf_regex).
    for name, rx in PATTERNS.items():
        if regex_str in (rx, hf_regex(rx)):
            return name
    return regex_str


# An atom (\p{..}, an escape, a [class] or a plain character) with a possessive interval: X{1,3}+
_POSSESSIVE_INTERVAL = regex.compile(r"(\\[pP]\{[^}]*\}|\\.|\[(?:\\.|[^\]\\])*\]|[^\\()\[\]{}|])"
                                     r"(\{\d+(?:,\d*)?\})\+")


def hf_regex(pattern: str) -> str:
    """Our regex spelled for HF tokenizers' engine, Oniguruma. Both engines read ``?+``, ``*+`` and
    ``++`` as possessive, but Oniguruma reads an interval then ``+`` (cl100k's ``\\p{N}{1,3}+``) as
    "one or more of {1,3}", so "1234567" would be one chunk, not "123", "456", "7". An atomic group,
    ``(?>\\p{N}{1,3})``, means the possessive interval in both. ValueError if one is left that
    this cannot rewrite (an interval after a group)."""
    out = _POSSESSIVE_INTERVAL.sub(lambda m: f"(?>{m[1]}{m[2]})", pattern)
    if regex.search(r"\{\d+(?:,\d*)?\}\+", out):
        raise ValueError(f"pre-tokenizer regex {pattern!r} has a possessive interval after a group, which "
                         "HF tokenizers would read differently; write it as an atomic group (?>...)")
    return out


def _sidecar(tok: BPETokenizer) -> dict:
    return {"format": SIDECAR_FORMAT, "version": 1, "pattern": tok.pattern, "pattern_name": tok.pattern_name,
            "special_tokens": dict(tok.special_tokens)}


def _from_sidecar(d, path: Path) -> tuple[str, dict[str, int]]:
    """(pattern, specials) from our sidecar dict, checked; ValueError naming ``path``."""
    if not isinstance(d, dict) or d.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path}: not a tinygrad_lm BPE sidecar (expected \"format\": \"{SIDECAR_FORMAT}\")")
    name, rx, specials = d.get("pattern_name"), d.get("pattern"), d.get("special_tokens", {})
    # The name when it still means the stored regex (so pattern_name survives); else the regex itself.
    pattern = name if name in PATTERNS and rx in (None, PATTERNS[name]) else rx
    if not isinstance(pattern, str) or not isinstance(specials, dict) or not all(
            isinstance(k, str) and type(v) is int for k, v in specials.items()):
        raise ValueError(f"{path}: expected a pattern string and special_tokens as {{str: int}}")
    return pattern, specials


def build(path: Path, vocab: dict[bytes, int], merges, pattern: str, specials: dict[str, int]) -> BPETokenizer:
    """BPETokenizer from parsed parts; its constructor's complaints name the file."""
    try:
        return BPETokenizer(vocab, merges, pattern=pattern, special_tokens=specials)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: inconsistent tokenizer ({e})") from None


# --- HF tokenizer.json ------------------------------------------------------------------------------
def _byte_level(use_regex: bool) -> dict:
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": use_regex}


def to_hf_dict(tok: BPETokenizer) -> dict:
    """``tok`` as HF tokenizer.json data: a BPE model over GPT-2-spelled tokens, ByteLevel
    pre-tokenizer (its own regex for "gpt2"; else Split on our regex, then ByteLevel without
    regex, as HF writes Llama 3's and SmolLM3's) and decoder, specials as added tokens."""
    if tok.pattern_name == "gpt2":
        pre = _byte_level(True)
    else:
        split = {"type": "Split", "pattern": {"Regex": hf_regex(tok.pattern)}, "behavior": "Isolated", "invert": False}
        pre = {"type": "Sequence", "pretokenizers": [split, _byte_level(False)]}
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s, i in sorted(tok.special_tokens.items(), key=lambda kv: kv[1])]
    vocab = {spell(b): i for b, i in tok.vocab.items()}
    clash = sorted(s for s in tok.special_tokens if s in vocab)
    if clash:
        raise ValueError(f"special tokens {clash} are spelled like ordinary tokens in GPT-2's byte-level "
                         "spelling; a tokenizer.json cannot tell them apart (save as .tiktoken or a folder)")
    # Specials go in the model vocab too (as in GPT-2's and SmolLM2's files): tokenizers keeps an added
    # token's id only when the model knows it, and would renumber one below the vocabulary's end.
    vocab.update(tok.special_tokens)
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
             "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
             # "a b" strings: byte-level spellings never hold a space, and every tokenizers version reads them
             "merges": [f"{spell(a)} {spell(b)}" for a, b in tok.merges]}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": pre, "post_processor": None, "decoder": _byte_level(True), "model": model}


def save_hf_json(tok: BPETokenizer, path) -> None:
    """Write ``tok`` as an HF ``tokenizer.json`` (see ``to_hf_dict``)."""
    Path(path).write_text(json.dumps(to_hf_dict(tok), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def is_hf_dict(d) -> bool:
    """Whether parsed JSON looks like an HF tokenizer.json (has a model with a type)."""
    return isinstance(d, dict) and isinstance(d.get("model"), dict) and "type" in d["model"]


def _pattern_of_hf_pre_tokenizer(pre, path: Path) -> str:
    """Our pattern for an HF pre-tokenizer: ByteLevel(use_regex) = "gpt2", Split(regex) + ByteLevel
    = that regex, Digits(individual) + ByteLevel(use_regex) = "smollm" (SmolLM2's file)."""
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps) or not steps:
        steps = [None]
    *first, last = steps
    if last is not None and last.get("type") == "ByteLevel" and not last.get("add_prefix_space", False):
        use_regex = last.get("use_regex", True)
        if not first:
            return "gpt2" if use_regex else "none"
        if len(first) == 1 and not use_regex and first[0].get("type") == "Split" \
                and first[0].get("behavior") == "Isolated" and not first[0].get("invert") \
                and isinstance(first[0].get("pattern"), dict) and isinstance(first[0]["pattern"].get("Regex"), str):
            return _pattern_arg(first[0]["pattern"]["Regex"])
        if len(first) == 1 and use_regex and first[0] == {"type": "Digits", "individual_digits": True}:
            return "smollm"
    raise ValueError(f"{path}: unsupported pre_tokenizer {json.dumps(pre)[:200]}; expected ByteLevel, "
                     "Split(regex) + ByteLevel(use_regex=false), or Digits(individual) + ByteLevel")


def bpe_from_hf_dict(d: dict, path) -> BPETokenizer:
    """A BPETokenizer from parsed HF tokenizer.json data; ValueError naming ``path`` for anything
    this byte-level BPE cannot reproduce (other models, normalizers, byte fallback, ...).

    Added tokens, special or not, become our special tokens. ``ignore_merges`` (Llama 3: a chunk
    that is itself a token is taken whole) is read as plain merging, which gives the same ids
    wherever a token is what its own bytes merge to, as in vocabularies trained by BPE."""
    path = Path(path)
    m = d["model"]
    if m.get("type") != "BPE":
        raise ValueError(f"{path}: model type {m.get('type')!r}; only byte-level BPE tokenizer.json files are supported")
    unsupported = {k: m.get(k) for k in ("dropout", "byte_fallback", "continuing_subword_prefix", "end_of_word_suffix")
                   if m.get(k) not in (None, False, "")}
    if d.get("normalizer") is not None:
        unsupported["normalizer"] = d["normalizer"]
    if unsupported:
        raise ValueError(f"{path}: unsupported tokenizer.json settings {unsupported}")
    pattern = _pattern_of_hf_pre_tokenizer(d.get("pre_tokenizer"), path)
    vocab_s, merges_s, added = m.get("vocab"), m.get("merges"), d.get("added_tokens") or []
    if not isinstance(vocab_s, dict) or not isinstance(merges_s, list) or not isinstance(added, list):
        raise ValueError(f"{path}: expected model.vocab {{token: id}}, model.merges [...] and added_tokens [...]")
    # Added tokens (special or not) are matched whole in text, never built by merges: our specials.
    specials = {}
    for a in added:
        if not isinstance(a, dict) or not isinstance(a.get("content"), str) or type(a.get("id")) is not int:
            raise ValueError(f"{path}: an added token is not {{\"id\": int, \"content\": str}}: {a!r}")
        specials[a["content"]] = a["id"]
    special_ids = set(specials.values())
    vocab = {}
    for s, i in vocab_s.items():
        if type(i) is not int:
            raise ValueError(f"{path}: token {s!r} has id {i!r}, not an integer")
        if i not in special_ids:  # GPT-2's files list <|endoftext|> in the vocab too
            vocab[unspell(s, str(path))] = i
    return build(path, vocab, parse_merges(merges_s, path), pattern, specials)


def parse_merges(merges, path) -> list[tuple[bytes, bytes]]:
    """Merges spelled as "a b" strings or [a, b] pairs -> byte pairs; ValueError naming ``path``."""
    out = []
    for k, m in enumerate(merges):
        parts = m.split(" ") if isinstance(m, str) else m
        if not isinstance(parts, list) or len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise ValueError(f"{path}: merge #{k} {m!r} is not two tokens")
        out.append((unspell(parts[0], str(path)), unspell(parts[1], str(path))))
    return out


# --- GPT-2 folder: vocab.json + merges.txt (+ bpe.json) ---------------------------------------------
def save_gpt2_folder(tok: BPETokenizer, folder) -> None:
    """Write ``folder/vocab.json`` and ``folder/merges.txt`` as GPT-2 ships them, and
    ``folder/bpe.json`` with what they cannot hold (pattern, special tokens)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {spell(b): i for b, i in sorted(tok.vocab.items(), key=lambda kv: kv[1])}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{spell(a)} {spell(b)}" for a, b in tok.merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "bpe.json").write_text(json.dumps(_sidecar(tok), ensure_ascii=True, indent=1) + "\n", encoding="utf-8")


def read_hf_chat_info(folder) -> dict:
    """chat_template, bos_token and eos_token of an HF folder: tokenizer_config.json (the template
    as a string, or a list of named ones where "default" is used), or chat_template.jinja, which
    newer transformers write beside it. Tokens may be strings or {"content": ...} dicts."""
    folder = Path(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = read_json(cfg_path, "an HF tokenizer_config.json") if cfg_path.is_file() else {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: expected a JSON object")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default", next(iter(named.values()), None))
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if template is not None and not isinstance(template, str):
        raise ValueError(f"{cfg_path}: chat_template is a {type(template).__name__}, expected a string")

    def token(key):
        v = cfg.get(key)
        return v.get("content") if isinstance(v, dict) else v if isinstance(v, str) else None
    return {"chat_template": template, "bos_token": token("bos_token"), "eos_token": token("eos_token")}


def hf_tokenizer_config(tok: BPETokenizer) -> dict:
    """tokenizer_config.json for transformers' PreTrainedTokenizerFast, with the chat template."""
    d = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
         "model_max_length": 1000000000000000019884624838656}
    for key, value in tok.chat_info().items():
        if value is not None:
            d[key] = value
    return d


def load_folder(folder) -> BPETokenizer:
    """A tokenizer folder: vocab.json + merges.txt (+ our bpe.json; without it, GPT-2's pattern and,
    as specials, the tokens no merge can build, like GPT-2's <|endoftext|>), or an HF tokenizer.json
    (with the chat template and bos/eos tokens of tokenizer_config.json)."""
    folder = Path(folder)
    vocab_path, merges_path, side_path = folder / "vocab.json", folder / "merges.txt", folder / "bpe.json"
    if not (vocab_path.is_file() and merges_path.is_file()):
        if (folder / "tokenizer.json").is_file():
            hf = folder / "tokenizer.json"
            d = read_json(hf, "an HF tokenizer.json")
            if not is_hf_dict(d):
                raise ValueError(f"{hf}: not an HF tokenizer.json (no model.type)")
            tok = bpe_from_hf_dict(d, hf)
            info = read_hf_chat_info(folder)
            known = {k: (v if k == "chat_template" or v in tok.special_tokens else None) for k, v in info.items()}
            return tok.set_chat_info(**known)
        raise ValueError(f"{folder}: a tokenizer folder holds vocab.json + merges.txt (GPT-2) or tokenizer.json (HF)")
    vocab_s = read_json(vocab_path, "a GPT-2 vocab.json")
    if not isinstance(vocab_s, dict) or not all(type(i) is int for i in vocab_s.values()):
        raise ValueError(f"{vocab_path}: not a GPT-2 vocab.json (expected {{token: id}})")
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{merges_path}: not a GPT-2 merges.txt (not UTF-8 text: {e})") from None
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = parse_merges([ln for ln in lines if ln], merges_path)
    if side_path.is_file():
        pattern, specials = _from_sidecar(read_json(side_path, "a tinygrad_lm bpe.json"), side_path)
        special_ids = set(specials.values())
        vocab = {unspell(s, str(vocab_path)): i for s, i in vocab_s.items() if i not in special_ids}
    else:
        pattern, vocab = "gpt2", {unspell(s, str(vocab_path)): i for s, i in vocab_s.items()}
        built = {a + b for a, b in merges}
        specials = {b.decode("utf-8", "replace"): i for b, i in vocab.items() if len(b) > 1 and b not in built}
        vocab = {b: i for b, i in vocab.items() if len(b) == 1 or b in built}
    return build(vocab_path, vocab, merges, pattern, specials)
