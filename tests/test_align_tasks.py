"""The built-in instruction task (tinygrad_lm.align.tasks) and the TRL-style JSONL files
(tinygrad_lm.align.jsonl). The prompt regexes here are written from the specification, not taken
from the module, so they check its phrasing independently."""
import json
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygrad_lm.align import jsonl, tasks
from tinygrad_lm.align.jsonl import read_jsonl, sft_records, write_jsonl
from tinygrad_lm.align.tasks import (FAMILIES, SPLITS, answer, edit_distance, family_of, is_correct, judge,
                                     make_example, split_of, task_split)

SPEC = {  # family -> the exact phrasing of the issue
    "reverse": r"Reverse the word: ([a-z]{3,8})",
    "sort": r"Sort the letters of: ([a-z]{3,8})",
    "uppercase": r"Uppercase: ([a-z]{3,8}(?: [a-z]{3,8}){1,3})",
    "add": r"What is (0|[1-9][0-9]?) \+ (0|[1-9][0-9]?)\?",
    "count": r"How many letters are in: ([a-z]{3,8})",
}
seeds = st.integers(0, 2 ** 32 - 1)
families = st.sampled_from(FAMILIES)


def example(family, seed):
    return make_example(family, np.random.default_rng(seed))


# --- the five families ----------------------------------------------------------------------------------
def test_families_are_the_five_named():
    assert FAMILIES == ("reverse", "sort", "uppercase", "add", "count")


@given(families, seeds)
def test_prompt_phrased_exactly_and_answer_right(family, seed):
    ex = example(family, seed)
    assert set(ex) == {"prompt", "completion", "family"} and ex["family"] == family
    m = re.fullmatch(SPEC[family], ex["prompt"])
    assert m, ex["prompt"]
    assert [f for f, p in SPEC.items() if re.fullmatch(p, ex["prompt"])] == [family]  # no other form
    out = ex["completion"]
    if family == "reverse":
        assert out[::-1] == m[1] and len(out) == len(m[1])
    elif family == "sort":
        assert list(out) == sorted(m[1]) and Counter(out) == Counter(m[1])
    elif family == "uppercase":
        assert out == m[1].upper() and out.lower() == m[1] and 2 <= len(out.split(" ")) <= 4
    elif family == "add":
        assert int(out) == int(m[1]) + int(m[2]) and out == str(int(out))
    else:
        assert out == str(len(m[1]))
    for w in re.findall("[a-z]+", ex["prompt"].split(": ", 1)[-1]) if family != "add" else []:
        assert w not in tasks._COMMON_WORDS


@given(families, seeds)
def test_answer_and_family_of_round_trip(family, seed):
    ex = example(family, seed)
    assert answer(ex["prompt"]) == ex["completion"]
    assert family_of(ex["prompt"]) == family
    assert is_correct(ex["prompt"], ex["completion"])
    assert is_correct(ex["prompt"], f" \n\t{ex['completion']}\n ")


def test_answers_known_values():
    assert answer("Reverse the word: abcdef") == "fedcba"
    assert answer("Sort the letters of: qzbab") == "abbqz"
    assert answer("Uppercase: xqv plorm") == "XQV PLORM"
    assert answer("What is 0 + 0?") == "0"
    assert answer("What is 99 + 99?") == "198"
    assert answer("How many letters are in: zzzzzzzz") == "8"


@pytest.mark.parametrize("prompt", [
    "Reverse the word: ab",              # too short
    "Reverse the word: abcdefghi",       # too long
    "Reverse the word: Abc",             # not lowercase
    "Reverse the word:  abc",            # two spaces
    "Reverse the word: abc\n",           # trailing newline
    " Reverse the word: abc",
    "reverse the word: abc",
    "Sort the letters of: ab1",
    "Uppercase: abc",                    # one word
    "Uppercase: abc def ghi jkl mno",    # five words
    "Uppercase: abc  def",
    "What is 100 + 1?",
    "What is 07 + 1?",                   # not how str(int) writes 7
    "What is -1 + 1?",
    "What is 1 + 1",
    "What is 1+1?",
    "What is ٣ + 1?",                    # a non-ASCII digit
    "How many letters are in: abc?",
    "Hello",
    "",
])
def test_answer_rejects_other_prompts_naming_them(prompt):
    with pytest.raises(ValueError, match=re.escape(repr(prompt))):
        answer(prompt)
    with pytest.raises(ValueError):
        family_of(prompt)
    with pytest.raises(ValueError):
        is_correct(prompt, "x")


def test_is_correct_strips_surrounding_whitespace_only():
    p = "Uppercase: abc def"
    assert is_correct(p, "ABC DEF") and is_correct(p, "  ABC DEF\n")
    assert not is_correct(p, "ABC  DEF") and not is_correct(p, "abc def") and not is_correct(p, "ABC DEF.")
    assert not is_correct("What is 2 + 3?", "05") and is_correct("What is 2 + 3?", "5")


def test_words_are_not_common_english_words():
    rng = np.random.default_rng(0)
    words = [tasks.random_word(rng) for _ in range(5000)]
    assert not set(words) & tasks._COMMON_WORDS
    assert {len(w) for w in words} == set(range(3, 9))
    assert all(re.fullmatch("[a-z]+", w) for w in words)
    assert "the" in tasks._COMMON_WORDS and "letters" in tasks._COMMON_WORDS


def test_unknown_family():
    with pytest.raises(ValueError, match="unknown task family 'mul'"):
        make_example("mul", np.random.default_rng(0))


# --- edit distance --------------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,d", [("kitten", "sitting", 3), ("", "", 0), ("", "abc", 3), ("flaw", "lawn", 2),
                                   ("intention", "execution", 5), ("abc", "abc", 0), ("ab", "ba", 2),
                                   ("sunday", "saturday", 3)])
def test_edit_distance_known_values(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a)


small = st.text(alphabet="abc", max_size=6)


@given(small, small, small)
def test_edit_distance_is_a_metric(a, b, c):
    d = edit_distance(a, b)
    assert (d == 0) == (a == b)
    assert d == edit_distance(b, a)
    assert edit_distance(a, c) <= d + edit_distance(b, c)
    assert abs(len(a) - len(b)) <= d <= max(len(a), len(b))
    assert edit_distance(a + c, b + c) <= d  # a common suffix never costs


# --- the judge ------------------------------------------------------------------------------------------
responses = st.text(alphabet="abcdefgxyz0123456789 \nABC", max_size=12)


@given(families, seeds, responses, responses)
def test_judge_symmetric_and_in_range(family, seed, a, b):
    p = example(family, seed)["prompt"]
    j = judge(p, a, b)
    assert j in (0, 1, 0.5)
    assert judge(p, b, a) == 1 - j
    assert judge(p, a, a) == 0.5


@given(families, seeds, responses)
def test_judge_prefers_correct(family, seed, wrong):
    ex = example(family, seed)
    if is_correct(ex["prompt"], wrong):
        wrong = wrong + "x"
    for right in (ex["completion"], "  " + ex["completion"] + "\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n\n"):
        assert judge(ex["prompt"], right, wrong) == 0
        assert judge(ex["prompt"], wrong, right) == 1


def test_judge_closer_then_shorter():
    p = "Reverse the word: abcdef"  # answer "fedcba"
    assert judge(p, "fedcbx", "fedxxx") == 0      # both wrong: distance 1 beats 3
    assert judge(p, "fedcbaa", "x") == 0          # closer beats shorter (distance 1, 7 long vs 6, 1 long)
    assert judge(p, "fedcbaa", "fedcb") == 1      # distance 1 each: the shorter wins
    assert judge(p, "fedcba", " fedcba ") == 0    # both correct: the shorter wins
    assert judge(p, "xedcba", "fedcbx") == 0.5    # equal on all three
    assert judge(p, "  fedcbx", "fedcbxx") == 0   # surrounding whitespace costs length, not distance


# --- splits ---------------------------------------------------------------------------------------------
def test_splits_never_share_a_prompt_for_any_seeds():
    drawn = {s: {e["prompt"] for seed in (0, 1) for e in task_split(s, 400, seed=seed)} for s in SPLITS}
    for s in SPLITS:
        assert all(split_of(p) == s for p in drawn[s])
    assert not drawn["train"] & drawn["validation"]
    assert not drawn["train"] & drawn["test"]
    assert not drawn["validation"] & drawn["test"]


def test_split_fractions_roughly_as_documented():
    rng = np.random.default_rng(0)
    counts = Counter(split_of(tasks.make_prompt(FAMILIES[i % 5], rng)) for i in range(5000))
    assert 0.77 < counts["train"] / 5000 < 0.83
    assert 0.08 < counts["validation"] / 5000 < 0.12 and 0.08 < counts["test"] / 5000 < 0.12


def test_split_deterministic_distinct_balanced_and_stable():
    a = task_split("validation", 103, seed=7)
    assert a == task_split("validation", 103, seed=7)
    assert a != task_split("validation", 103, seed=8)
    assert len({e["prompt"] for e in a}) == 103
    assert [e["family"] for e in a] == [FAMILIES[i % 5] for i in range(103)]
    counts = Counter(e["family"] for e in a)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert task_split("validation", 40, seed=7) == a[:40]                       # a longer split extends a shorter
    only_add = task_split("validation", 20, seed=7, families=("add",))
    assert only_add == [e for e in a if e["family"] == "add"][:20]             # same stream per family
    two = task_split("validation", 10, seed=7, families=["count", "sort"])
    assert [e["family"] for e in two] == ["count", "sort"] * 5
    for e in a:
        assert answer(e["prompt"]) == e["completion"] and family_of(e["prompt"]) == e["family"]
    assert task_split("test", 0) == []


def test_split_errors():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        task_split("dev", 3)
    with pytest.raises(ValueError, match="unknown task family"):
        task_split("train", 3, families=("add", "mul"))
    with pytest.raises(ValueError, match="n must be"):
        task_split("train", -1)
    cap = tasks._capacity("add", "test")
    assert 900 < cap < 1100
    with pytest.raises(ValueError, match=f"only {cap} distinct 'add' prompts"):
        task_split("test", 5 * (cap + 1))


def test_whole_add_test_split_can_be_drawn():
    cap = tasks._capacity("add", "test")
    got = task_split("test", cap, families=("add",))
    assert len({e["prompt"] for e in got}) == cap


# --- JSONL ----------------------------------------------------------------------------------------------
text = st.text(max_size=20)  # any Unicode: newlines, U+2028, quotes, emoji
roles = st.sampled_from(jsonl.ROLES)
message_lists = st.lists(st.builds(lambda r, c: {"role": r, "content": c}, roles, text), min_size=1, max_size=3)


@given(st.lists(st.tuples(text, text), min_size=1, max_size=4))
def test_sft_prompt_completion_round_trip(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("j") / "sft.jsonl"
    write_jsonl(path, [{"prompt": p, "completion": c} for p, c in pairs], kind="sft")
    assert read_jsonl(path, "sft") == [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]} for p, c in pairs]


@given(st.lists(message_lists, min_size=1, max_size=3))
def test_sft_messages_round_trip(tmp_path_factory, convs):
    convs = [c + [{"role": "assistant", "content": "ok"}] for c in convs]
    path = tmp_path_factory.mktemp("j") / "sft.jsonl"
    write_jsonl(path, [{"messages": c, "id": i} for i, c in enumerate(convs)])
    assert read_jsonl(path, "sft") == [{"messages": c} for c in convs]


def test_sft_conversational_prompt_completion(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    completion = [{"role": "assistant", "content": "Hello."}]
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": prompt, "completion": completion}])
    assert read_jsonl(path, "sft") == [{"messages": prompt + completion}]


@given(st.lists(st.tuples(text, text, text), min_size=1, max_size=4), message_lists, message_lists)
def test_preference_round_trip(tmp_path_factory, triples, conv_prompt, conv_answer):
    path = tmp_path_factory.mktemp("j") / "pref.jsonl"
    recs = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in triples]
    recs.append({"prompt": conv_prompt, "chosen": conv_answer, "rejected": conv_answer[:1]})
    write_jsonl(path, recs, kind="preference")
    assert read_jsonl(path, "preference") == recs


def test_preference_implicit_prompt(tmp_path):
    user = {"role": "user", "content": "What is 2 + 2?"}
    good, bad = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": [user, good], "rejected": [user, bad]}])
    assert read_jsonl(path, "preference") == [{"prompt": [user], "chosen": [good], "rejected": [bad]}]


@given(st.lists(st.one_of(text, message_lists), min_size=1, max_size=4))
def test_prompt_round_trip(tmp_path_factory, prompts):
    path = tmp_path_factory.mktemp("j") / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p, "extra": 1} for p in prompts], kind="prompt")
    assert read_jsonl(path, "prompt") == [{"prompt": p} for p in prompts]


def test_task_examples_as_sft_file(tmp_path):
    exs = task_split("train", 10)
    path = write_jsonl(tmp_path / "task.jsonl", sft_records(exs), kind="sft")
    assert read_jsonl(path, "sft") == [{"messages": [{"role": "user", "content": e["prompt"]},
                                                     {"role": "assistant", "content": e["completion"]}]}
                                       for e in exs]
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first == {"prompt": exs[0]["prompt"], "completion": exs[0]["completion"]}


def test_blank_lines_bom_crlf_and_utf8(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9"}\r\n\n   \n{"prompt": "\\u2028x"}\n\n')
    assert read_jsonl(path, "prompt") == [{"prompt": "café"}, {"prompt": "\u2028x"}]


@pytest.mark.parametrize("kind,lines,line,what", [
    ("prompt", ['{"prompt": "a"}', "", "{not json"], 3, "not JSON"),
    ("prompt", ['{"prompt": "a"}', "[1, 2]"], 2, "expected a JSON object, got an array"),
    ("prompt", ['{"question": "a"}'], 1, "missing field 'prompt'"),
    ("prompt", ['{"prompt": 3}'], 1, "'prompt' must be a string or a list of messages, got a number"),
    ("sft", ['{"prompt": "a"}'], 1, "missing field 'completion'"),
    ("sft", ['{"text": "a"}'], 1, "an SFT record has 'messages', or 'prompt' and 'completion'"),
    ("sft", ['{"messages": [{"role": "user", "content": "a"}]}'], 1, "no 'assistant' message"),
    ("sft", ['{"messages": [{"role": "robot", "content": "a"}]}'], 1, "unknown role 'robot'"),
    ("sft", ['{"messages": [{"role": "user"}]}'], 1, "'content' must be a string"),
    ("sft", ['{"messages": []}'], 1, "empty"),
    ("sft", ['{"messages": "hi"}'], 1, "must be a list"),
    ("sft", ['{"prompt": "a", "completion": [{"role": "assistant", "content": "b"}]}'], 1,
     "'prompt' is a string but 'completion' is a message list"),
    ("preference", ['{"prompt": "a", "chosen": "b"}'], 1, "missing field 'rejected'"),
    ("preference", ['{"prompt": "a", "chosen": "b", "rejected": null}'], 1, "got null"),
    ("preference", ['{"chosen": "b", "rejected": "c"}'], 1, "missing field 'prompt'"),
    ("preference", ['{"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "y"}]}'],
     1, "share no first message"),
    ("preference", ['{"prompt": "a", "chosen": "b", "rejected": "c"}', '{"prompt": [{"role": "user", "content": "a"}], '
                    '"chosen": "b", "rejected": "c"}'], 2, "use strings throughout"),
    ("prompt", [], None, "empty file"),
    ("prompt", ["", "  "], None, "empty file"),
])
def test_errors_name_file_and_line(tmp_path, kind, lines, line, what):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n" * bool(lines), encoding="utf-8")
    where = f"{path}:{line}: " if line else f"{path}: "
    with pytest.raises(ValueError, match=re.escape(where) + ".*" + re.escape(what)):
        read_jsonl(path, kind)


def test_not_utf8_and_unknown_kind(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not UTF-8")):
        read_jsonl(path, "prompt")
    with pytest.raises(ValueError, match="unknown kind 'dpo'"):
        read_jsonl(path, "dpo")


def test_write_is_atomic_and_checks(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "é"}])
    assert path.read_bytes() == '{"prompt": "é"}\n'.encode()
    with pytest.raises(TypeError):
        write_jsonl(path, [{"prompt": "a"}, {"prompt": object()}])
    with pytest.raises(ValueError, match="record 1: missing field 'prompt'"):
        write_jsonl(path, [{"prompt": "a"}, {"q": "b"}], kind="prompt")
    with pytest.raises(ValueError, match="record 0: expected a dict"):
        write_jsonl(path, ["a"])
    assert path.read_bytes() == '{"prompt": "é"}\n'.encode()  # untouched by the failed writes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]  # no temp files left
