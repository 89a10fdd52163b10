"""JSON Lines datasets with TRL's field names, read into one shape per kind.

    kind          a line holds (TRL's names)                           read as
    "sft"         {"messages": [{"role", "content"}, ...]}             {"messages": [...]}
                  or {"prompt", "completion"}: two strings, or two
                  message lists (TRL's conversational form)            {"messages": prompt + completion}
    "preference"  {"prompt", "chosen", "rejected"}: three strings, or
                  three message lists; or {"chosen", "rejected"} as
                  message lists sharing their first messages (TRL's
                  implicit prompt: the shared messages become it)      {"prompt", "chosen", "rejected"}
    "prompt"      {"prompt"}: a string or a message list               {"prompt": ...}

A string prompt becomes one "user" message and a string completion one "assistant" message. A
message is {"role", "content"} with a role of ROLES and a string content; its other keys pass
through, other keys of a line are dropped. Every problem is a ValueError that starts
"FILE:LINE:" and says what was wrong. Blank lines are skipped; a file without records is an error.
Files are UTF-8 (a leading byte-order mark is allowed)."""
from __future__ import annotations

import json
from pathlib import Path

from ..hub.safetensors_file import atomic_write
from ..tokenizers.chat import check_messages

KINDS = ("sft", "preference", "prompt")
ROLES = ("system", "user", "assistant", "tool")


class _Bad(ValueError):
    """A problem with one record; read_jsonl adds the file and line."""


def _messages(value, field: str) -> list[dict]:
    if isinstance(value, list) and not value:
        raise _Bad(f"{field!r} is an empty list: it needs at least one message")
    try:
        messages = check_messages(value)
    except ValueError as e:
        raise _Bad(f"{field!r}: {e}") from None
    for i, m in enumerate(messages):
        if m["role"] not in ROLES:
            raise _Bad(f"{field!r}: message {i}: unknown role {m['role']!r}; roles are {', '.join(ROLES)}")
    return messages


def _text_or_messages(record: dict, field: str):
    """A field that is a string or a message list (TRL's standard or conversational form)."""
    if field not in record:
        raise _Bad(f"missing field {field!r} (the line has {', '.join(map(repr, record)) or 'no fields'})")
    value = record[field]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _messages(value, field)
    raise _Bad(f"{field!r} must be a string or a list of messages, got {_json_type(value)}")


def _same_form(record: dict, fields) -> None:
    forms = {f: isinstance(record[f], str) for f in fields}
    if len(set(forms.values())) > 1:
        strings = [f for f, s in forms.items() if s]
        lists = [f for f, s in forms.items() if not s]
        raise _Bad(f"{' and '.join(map(repr, strings))} {'is a string' if len(strings) == 1 else 'are strings'} "
                   f"but {' and '.join(map(repr, lists))} {'is a message list' if len(lists) == 1 else 'are message lists'}"
                   f": use strings throughout or message lists throughout")


def normalize(record, kind: str) -> dict:
    """One record in the shape read_jsonl gives for ``kind`` (see the module docstring); ValueError
    saying what is wrong."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if not isinstance(record, dict):
        raise _Bad(f"expected a JSON object, got {_json_type(record)}")
    if kind == "sft":
        if "messages" in record:
            messages = _messages(record["messages"], "messages")
        elif "prompt" in record or "completion" in record:
            out = {f: _text_or_messages(record, f) for f in ("prompt", "completion")}
            _same_form(out, ("prompt", "completion"))
            if isinstance(out["prompt"], str):
                messages = [{"role": "user", "content": out["prompt"]},
                            {"role": "assistant", "content": out["completion"]}]
            else:
                messages = out["prompt"] + out["completion"]
        else:
            raise _Bad("missing field: an SFT record has 'messages', or 'prompt' and 'completion'")
        if not any(m["role"] == "assistant" for m in messages):
            raise _Bad("no 'assistant' message: nothing to learn from this record")
        return {"messages": messages}
    if kind == "prompt":
        return {"prompt": _text_or_messages(record, "prompt")}
    if "prompt" not in record and isinstance(record.get("chosen"), list) and isinstance(record.get("rejected"), list):
        return _implicit_prompt(record)
    out = {f: _text_or_messages(record, f) for f in ("prompt", "chosen", "rejected")}
    _same_form(out, ("prompt", "chosen", "rejected"))
    return out


def _implicit_prompt(record: dict) -> dict:
    """TRL's implicit-prompt preference: whole conversations whose shared first messages are the prompt."""
    chosen, rejected = _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        raise _Bad("missing field 'prompt', and 'chosen' and 'rejected' share no first message to take it from")
    if k == len(chosen) or k == len(rejected):
        raise _Bad("'chosen' or 'rejected' is all prompt: the two conversations must differ after the "
                   "messages they share")
    return {"prompt": chosen[:k], "chosen": chosen[k:], "rejected": rejected[k:]}


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


def read_jsonl(path, kind: str) -> list[dict]:
    """The records of a JSON Lines file, each normalised to ``kind``'s shape (module docstring).
    ValueError "FILE:LINE: what was wrong" on the first bad line."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    path = Path(path)
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not UTF-8 (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON: {e.msg} at column {e.colno}") from None
            try:
                records.append(normalize(value, kind))
            except _Bad as e:
                raise ValueError(f"{path}:{lineno}: {e}") from None
    if not records:
        raise ValueError(f"{path}: empty file: no {kind} records (blank lines only or nothing)")
    return records


def write_jsonl(path, records, kind: str | None = None) -> Path:
    """Write ``records`` (dicts) one JSON object a line, UTF-8 with characters as they are (not
    \\u-escaped), atomically: the old file or the whole new one, never part. With ``kind`` each
    record is first checked as read_jsonl would (and written as given, not normalised)."""
    records = list(records)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    lines = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"record {i}: expected a dict, got a {type(r).__name__}")
        if kind is not None:
            try:
                normalize(r, kind)
            except _Bad as e:
                raise ValueError(f"record {i}: {e}") from None
        lines.append(json.dumps(r, ensure_ascii=False) + "\n")

    def write(tmp: Path):
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(lines)
    return atomic_write(path, write)


def sft_records(examples) -> list[dict]:
    """Task examples (``tasks.make_example`` / ``tasks.task_split`` dicts) as TRL prompt-completion
    records: {"prompt", "completion"}."""
    return [{"prompt": e["prompt"], "completion": e["completion"]} for e in examples]
