"""Chat templates: a conversation -> the one prompt string a chat model was trained on.

A chat model's file carries its prompt format as a Jinja template (HF ``tokenizer_config.json``
"chat_template", GGUF "tokenizer.chat_template"). We render it the way transformers'
``apply_chat_template`` does, so the same messages give the same text:

    tpl = ChatTemplate(text, bos_token="<|im_start|>", eos_token="<|im_end|>")   # text=None: CHATML
    prompt = tpl.render([{"role": "user", "content": "Hi"}])   # ends with the assistant header
    stops = end_of_turn(tpl, special_tokens)                   # ("<|im_end|>",): stop generating here

The template comes from a stranger, so it runs only in jinja2's ``ImmutableSandboxedEnvironment``:
no attribute that starts with "_" (``cycler.__init__.__globals__``), no method that mutates a
list or dict (``.append``), no unsafe callables. Where jinja2 would quietly render such an access
as "" we raise at once. We also refuse ``*``/``**`` results and outputs over ``MAX_CHARS``
(``{{ 'x' * 10**12 }}`` would take the machine's memory). What the sandbox cannot bound is time: a
template's loops (each range at most 100,000 long, but nestable) may run long; render it where a
slow answer can be interrupted if its source is untrusted.

Like transformers: ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension
(``{% break %}``), globals ``raise_exception`` and ``strftime_now``, a ``tojson`` filter with
``json.dumps`` options (no HTML escaping, unlike Jinja's own), variables ``messages``,
``add_generation_prompt``, ``bos_token``/``eos_token``, ``tools``/``documents`` (None when not
given) and any extra keyword (e.g. ``enable_thinking=False``). Unlike transformers,
``add_generation_prompt`` defaults to True (we render prompts to generate from), and every
failure is one ``ChatTemplateError`` naming the template's line.
"""
from __future__ import annotations

import functools
import json
import re
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# transformers' default template before v4.43 (the class attribute ``default_chat_template``), used
# for models that ship none: "<|im_start|>{role}\n{content}<|im_end|>\n" per message.
CHATML = ("{% for message in messages %}"
          "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

MAX_CHARS = 1 << 24  # 16M characters: far above any prompt a model reads, far below exhausting memory


class ChatTemplateError(TemplateError, ValueError):
    """A chat template that does not compile, breaks the sandbox, calls ``raise_exception``, or
    fails while rendering. A ``jinja2.TemplateError`` (as transformers raises) and a ValueError
    (as the rest of this package raises for bad input)."""


# --- the sandbox ------------------------------------------------------------------------------------
class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def unsafe_undefined(self, obj, attribute):
        # jinja2 returns an Undefined that prints as "" and is falsy, so `{{ ''.__class__ }}` renders
        # nothing and `{% if x.__init__ %}` is quietly false; a template reaching there is hostile or
        # broken, so say so.
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            seq, n = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_CHARS:
                raise SecurityError(f"a {len(seq)}-long {type(seq).__name__} repeated {n} times (over {MAX_CHARS:,})")
        elif isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            if abs(left).bit_length() * right > 8 * MAX_CHARS:
                raise SecurityError(f"{left} ** {right} (a number of over {8 * MAX_CHARS:,} bits)")
        return super().call_binop(context, operator, left, right)


def _raise_exception(message):
    # The template's own refusal, e.g. "Conversation roles must alternate user/assistant/...".
    raise ChatTemplateError(f"the chat template refused this conversation: {message}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


def _dict(*args, **kwargs):
    # Replaces the builtin type `dict` (whose attributes include `mro`) with a plain function.
    return dict(*args, **kwargs)


_dict.fromkeys = dict.fromkeys


class _Namespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore names, as transformers' does (defence in depth)."""

    def __init__(*args, **kwargs):  # noqa: N805 -- jinja2's signature trick: `namespace(self=1)` works
        self, attrs = args[0], dict(*args[1:], **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name):
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"the namespace attribute {name!r} (names starting with '_' are refused)")


@functools.lru_cache(maxsize=1)
def _environment() -> _Sandbox:
    if tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3]) < (3, 1, 6):
        # 3.1.5 and 3.1.6 closed sandbox escapes (str.format, the |attr filter), as transformers demands
        raise ImportError(f"chat templates need jinja2>=3.1.6 (older sandboxes can be escaped); this is "
                          f"{jinja2.__version__}: pip install -U jinja2")
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_dict,
                       namespace=_Namespace)
    return env


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as e:
        raise ChatTemplateError(f"the chat template has a syntax error on line {e.lineno}: {e.message}"
                                f"{_quote(source, e.lineno)}") from None


def _quote(source: str, lineno) -> str:
    lines = source.splitlines()
    if not lineno or not 0 < lineno <= len(lines):
        return ""
    line = lines[lineno - 1].strip()
    return f"\n  line {lineno}: {line[:100]}{'...' if len(line) > 100 else ''}"


def _template_line(exc: BaseException):
    """The template line an exception was raised on: jinja2 rewrites tracebacks so that frames of
    template code carry the file name "<template>" and the template's line numbers."""
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# --- what the template sees ---------------------------------------------------------------------------
def _plain(value, where: str):
    """A copy of ``value`` made of JSON types only (str, int, float, bool, None, list, dict), as
    transformers 5 rebuilds template inputs: a rich object's methods are not ours to vouch for."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, int, float):  # subclasses (str enums, ...) carry extra methods: strip them
        if isinstance(value, kind):
            return kind(value) if kind is not str else str.__str__(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: keys must be strings, got {k!r}")
            out[str.__str__(k)] = _plain(v, f"{where}[{k!r}]")
        return out
    raise ValueError(f"{where}: a {type(value).__name__}; a chat template sees only str, int, float, bool, "
                     f"None, lists and dicts")


def check_messages(messages) -> list[dict]:
    """The conversation as plain dicts, or a ValueError naming the message and the problem. Each
    message is a dict with a string "role" and a string "content"; other keys (``tool_calls``,
    ``name``, ...) pass through, those set to None are dropped (as transformers 5 does: templates
    test ``'key' in message``, and would print "None")."""
    if not isinstance(messages, (list, tuple)):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                         f"got a {type(messages).__name__}")
    if not messages:
        raise ValueError("messages is empty: a chat template needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i}: expected a dict with 'role' and 'content', got a {type(m).__name__}")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise ValueError(f"message {i}: 'role' must be a non-empty string, got {role!r}"
                             + ("" if "role" in m else " (no 'role' key)"))
        content = m.get("content")
        if not isinstance(content, str):
            what = "no 'content' key" if "content" not in m else f"a {type(content).__name__}"
            raise ValueError(f"message {i} ({role}): 'content' must be a string, got {what}")
        out.append(_plain({k: v for k, v in m.items() if v is not None}, f"message {i}"))
    return out


# --- the template ----------------------------------------------------------------------------------------
class ChatTemplate:
    """A model's chat template (Jinja text; None means ``CHATML``) with the tokenizer's BOS and EOS
    spellings, which templates read as ``bos_token`` and ``eos_token`` (None: left undefined, as
    transformers leaves a token the tokenizer lacks). Compiles at once: a syntax error is a
    ``ChatTemplateError`` here, not at the first render."""

    def __init__(self, template: str | None = None, bos_token: str | None = None, eos_token: str | None = None):
        template = CHATML if template is None else template
        if not isinstance(template, str):
            raise ValueError(f"a chat template is Jinja text (str), got a {type(template).__name__}")
        for name, tok in (("bos_token", bos_token), ("eos_token", eos_token)):
            if tok is not None and not isinstance(tok, str):
                raise ValueError(f"{name} must be a string or None, got {tok!r}")
        self.template, self.bos_token, self.eos_token = template, bos_token, eos_token
        self._compiled = _compile(template)

    def __repr__(self) -> str:
        text = self.template if len(self.template) <= 60 else self.template[:57] + "..."
        return f"ChatTemplate({text!r}, bos_token={self.bos_token!r}, eos_token={self.eos_token!r})"

    def render(self, messages, add_generation_prompt: bool = True, *, tools=None, documents=None,
               **kwargs) -> str:
        """The conversation as the model's prompt text. ``add_generation_prompt`` appends the
        header that opens an assistant turn (what a model generates after). ``tools`` (JSON
        schemas) and ``documents`` (dicts) are passed as they are; extra keywords become template
        variables (and may override ``bos_token``/``eos_token``)."""
        context = {"bos_token": self.bos_token, "eos_token": self.eos_token}
        context = {k: v for k, v in context.items() if v is not None}
        context.update(_plain(kwargs, "keyword arguments"))
        for name, items in (("tools", tools), ("documents", documents)):
            if items is not None and not (isinstance(items, (list, tuple)) and all(isinstance(x, dict) for x in items)):
                raise ValueError(f"{name} must be a list of dicts (JSON schemas for tools), got {items!r:.80}")
        context.update(messages=check_messages(messages), add_generation_prompt=bool(add_generation_prompt),
                       tools=_plain(tools, "tools"), documents=_plain(documents, "documents"))
        try:
            chunks, size = [], 0
            for chunk in self._compiled.generate(context):
                size += len(chunk)
                if size > MAX_CHARS:
                    raise SecurityError(f"an output of over {MAX_CHARS:,} characters")
                chunks.append(chunk)
            return "".join(chunks)
        except ChatTemplateError as e:  # raise_exception: add the line it was called on
            raise ChatTemplateError(f"{e}{_quote(self.template, _template_line(e))}") from None
        except SecurityError as e:
            raise ChatTemplateError(f"the chat template tried to reach what the sandbox forbids: {e}"
                                    f"{_quote(self.template, _template_line(e))}") from None
        except Exception as e:  # UndefinedError, TypeError from `'a' + 1`, RecursionError, ...
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}"
                                    f"{_quote(self.template, _template_line(e))}") from e


# --- where an assistant turn ends ------------------------------------------------------------------------
_PROBE_USER, _PROBE_ASSISTANT, _PROBE_NEXT = "tinygrad-lm-probe-1", "tinygrad-lm-probe-2", "tinygrad-lm-probe-3"


def end_of_turn(template, special_tokens=(), eos_token: str | None = None) -> tuple[str, ...]:
    """The strings that end an assistant's turn: stop generating when the model emits one.

    The rule: render user / assistant / user with marker contents, and take the text between the
    assistant's content and the next user's. The special token found earliest in it (the longest
    one where several start at the same place) ends the turn: ChatML's "<|im_end|>", Llama 3's
    "<|eot_id|>", Mistral's and Zephyr's EOS "</s>", Gemma's "<end_of_turn>". EOS always ends
    generation too, so it follows, if different. If the template refuses the probe, hides the
    assistant content, or puts no special token there, the answer is EOS alone (empty if None).

    ``template``: a ChatTemplate or its text; ``special_tokens``: the tokenizer's special token
    strings (any iterable, e.g. a dict's keys); ``eos_token``: default ``template.eos_token``."""
    if not isinstance(template, ChatTemplate):
        template = ChatTemplate(template, eos_token=eos_token)
    eos = template.eos_token if eos_token is None else eos_token
    eos_only = (eos,) if eos else ()
    candidates = {s for s in special_tokens if isinstance(s, str) and s} | set(eos_only)
    probe = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ASSISTANT},
             {"role": "user", "content": _PROBE_NEXT}]
    try:  # a token the template adds but we were not told is "" here: `bos_token + ...` must not fail
        text = template.render(probe, add_generation_prompt=False, bos_token=template.bos_token or "",
                               eos_token=eos or "")
    except ChatTemplateError:
        return eos_only
    start, stop = text.find(_PROBE_ASSISTANT), text.find(_PROBE_NEXT)
    if start < 0 or stop < start:
        return eos_only
    between = text[start + len(_PROBE_ASSISTANT):stop]
    found = [(between.find(s), -len(s), s) for s in candidates if s in between]
    if not found:
        return eos_only
    turn_end = min(found)[2]
    return (turn_end,) + tuple(e for e in eos_only if e != turn_end)


__all__ = ["ChatTemplate", "ChatTemplateError", "CHATML", "MAX_CHARS", "check_messages", "end_of_turn"]


def end_of_turn_ids(template: "ChatTemplate", tokenizer) -> list[int]:
    """The ids of the tokenizer's special tokens that end an assistant turn in this template: what
    a chat model's generation stops on (empty when the tokenizer lacks them)."""
    specials = getattr(tokenizer, "special_tokens", {}) or {}
    return [tokenizer.token_id(s) for s in end_of_turn(template, specials) if s in specials]
