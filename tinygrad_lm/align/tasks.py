"""A built-in instruction task with checkable answers: no download, no model code.

Five families, each prompt phrased exactly so (w: 3-8 random lowercase letters; a, b: 0-99 in
decimal; phrase: 2-4 such words separated by single spaces):

    reverse     Reverse the word: {w}               -> w reversed
    sort        Sort the letters of: {w}            -> the letters of w in alphabetical order
    uppercase   Uppercase: {phrase}                 -> phrase in upper case
    add         What is {a} + {b}?                  -> a + b in decimal
    count       How many letters are in: {w}        -> len(w) in decimal

Words are random letter strings, not dictionary words: a draw that is one of the few hundred common
English words of ``_COMMON_WORDS`` is drawn again. Rarer real words can slip through (a random
3-letter string is a word a few percent of the time); the tasks need the letters, not the meaning,
so that is harmless.

``task_split`` gives train / validation / test examples. Which split a prompt belongs to is a fixed
hash of the prompt text (``split_of``), the same for every seed: the splits never share a prompt,
whatever seeds drew them. ``judge`` stands in for human raters when pairs of responses need a
preference (reward model, DPO): correct first, then closer to the answer, then shorter."""
from __future__ import annotations

import hashlib
import re

import numpy as np

FAMILIES = ("reverse", "sort", "uppercase", "add", "count")
SPLITS = ("train", "validation", "test")
SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}  # of all prompts, by hash
WORD_LENGTHS = (3, 8)    # inclusive
PHRASE_WORDS = (2, 4)    # inclusive
MAX_NUMBER = 99          # a, b in 0..MAX_NUMBER

_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))

# Common English words of 3-8 letters, never drawn as a task word (see the module docstring).
_COMMON_WORDS = frozenset("""
the and for are but not you all any can had her was one our out day get has him his how man new
now old see two way who boy did its let put say she too use ago add age air ask bad bag bed big
bit box bus buy car cat cut dog ear eat end eye far few fit fly fun god gun hat hit hot ice job
joy key kid lay leg lie lot low map may mom net nor odd off oil own pay per pen pet pie pop red
rid row run sad sat sea set sit six sky son sun tax tea ten tie top toy try war wet why win yes
yet zoo able also area away baby back ball bank base bear beat been best bird blue boat body book
born both call came card care case city cold come cook cool cost dark data date dead deal dear
deep does done door down draw drop each east easy else even ever face fact fail fall farm fast
fear feel feet fell felt file fill film find fine fire fish five food foot form four free from
full game gave girl give goes gold gone good grow hair half hall hand hard have head hear heat
held help here high hill hold home hope hour huge idea into item join just keep kept kill kind
king knew know lack lady land last late lead left less life lift like line list live long look
lose lost love made main make many mark meet mind miss more most move much must name near need
news next nice nine none note once only open over page paid pair park part pass past plan play
poor pull push rain read real rest rich ride ring rise risk road rock role room rule safe said
sale same save seat seem seen self sell send ship shop shot show side sign sing size slow snow
soft sold some song soon sort star stay step stop such sure take talk tall team tell tend term
test than that them then they thin this thus time told took tree trip true turn type unit upon
very view vote wait walk wall want warm wash week well went were west what when whom wide wife
wild will wind wish with wood word work year your zero about above after again agree ahead allow
alone along among apply argue avoid aware begin being below black board bring build carry catch
cause chair cheap check child claim class clean clear close coach could count cover crime cross
dance death doubt dream dress drink drive early earth eight enemy enjoy enter equal event every
exist field fight final first floor focus force front fruit funny glass grant great green group
guess happy heart heavy horse hotel house human image issue large later laugh learn least leave
legal level light limit local lower lucky magic major maybe media metal might money month mouth
movie music never night north offer often order other owner paper party peace phone piece place
plant point power price prove quick quiet radio raise range reach ready right river round scene
score sense serve seven shake shall share short since sleep small smile sound south space speak
spend sport staff stage stand start state still stock stone story study style sugar table teach
thank their there these thing think three throw today total touch tough tower trade train treat
trial truth under until upper usual value video visit voice watch water where which while white
whole whose woman world worry would write wrong young across action advice almost always amount
animal answer anyone appear around arrive attack author become before behind better beyond broken
budget camera cancer career center chance change choice church circle common couple course create
credit damage debate decide degree demand design detail dinner direct doctor double during effect
effort either energy engine enough entire escape expect expert family father figure finger finish
follow forest forget formal friend future garden gender ground growth happen health height hidden
honest impact inside island itself letter listen little living market master matter member memory
middle minute modern moment mother moving murder nation nature nobody normal notice number object
office orange parent people period person phrase player please plenty pocket police policy public
rather reason record reduce region remain remove report result return review safety school screen
season second secret select senior series should shoulder silver simple single sister social
source speech spirit spring square street strong summer supply system target theory thirty though
ticket toward travel twenty unless useful victim visual winter within without wonder worker writer
yellow account against already another because between brother capital century certain chapter
company control country culture current develop example explain failure federal feeling finally
foreign forward freedom general growing history however hundred husband imagine include inside
instead involve kitchen machine manager meeting message million minister morning natural nothing
officer partner patient perhaps picture popular present prevent private problem process produce
program project protect provide purpose quality quickly reality receive recent release require
respond science section serious service several similar society soldier someone special station
student subject success support surface teacher thought through tonight totally trouble usually
various village violent weather website western whether without working written absolute
building business children computer consider continue describe director distance everyone evidence
exercise function hospital increase industry interest language material military national original
personal physical position possible practice pressure probably producer property question remember
research resource security shoulder solution somebody specific standard strategy strength together
training whatever yourself alphabet letters reversed sorted
""".split())
assert all(WORD_LENGTHS[0] <= len(w) <= WORD_LENGTHS[1] for w in _COMMON_WORDS)

_WORD = "[a-z]{%d,%d}" % WORD_LENGTHS
_NUMBER = "(?:0|[1-9][0-9]?)"  # 0..99 as str(int) writes it: no sign, no leading zero
_PATTERNS = {
    "reverse": re.compile(f"Reverse the word: ({_WORD})"),
    "sort": re.compile(f"Sort the letters of: ({_WORD})"),
    "uppercase": re.compile(f"Uppercase: ({_WORD}(?: {_WORD}){{{PHRASE_WORDS[0] - 1},{PHRASE_WORDS[1] - 1}}})"),
    "add": re.compile(f"What is ({_NUMBER}) \\+ ({_NUMBER})\\?"),
    "count": re.compile(f"How many letters are in: ({_WORD})"),
}
assert tuple(_PATTERNS) == FAMILIES


def random_word(rng: np.random.Generator) -> str:
    """3-8 uniformly random lowercase letters (length uniform too), never a word of _COMMON_WORDS."""
    while True:
        n = int(rng.integers(WORD_LENGTHS[0], WORD_LENGTHS[1] + 1))
        w = "".join(_LETTERS[rng.integers(0, 26, size=n)])
        if w not in _COMMON_WORDS:
            return w


def _check_family(family) -> str:
    if family not in FAMILIES:
        raise ValueError(f"unknown task family {family!r}; choose from {', '.join(FAMILIES)}")
    return family


def make_prompt(family: str, rng: np.random.Generator) -> str:
    """One random prompt of ``family``, phrased exactly as the module docstring shows."""
    family = _check_family(family)
    if family == "reverse":
        return f"Reverse the word: {random_word(rng)}"
    if family == "sort":
        return f"Sort the letters of: {random_word(rng)}"
    if family == "uppercase":
        k = int(rng.integers(PHRASE_WORDS[0], PHRASE_WORDS[1] + 1))
        return "Uppercase: " + " ".join(random_word(rng) for _ in range(k))
    if family == "add":
        a, b = (int(x) for x in rng.integers(0, MAX_NUMBER + 1, size=2))
        return f"What is {a} + {b}?"
    return f"How many letters are in: {random_word(rng)}"


def make_example(family: str, rng: np.random.Generator) -> dict:
    """{"prompt", "completion", "family"}: a random prompt of ``family`` and its one correct answer."""
    prompt = make_prompt(family, rng)
    return {"prompt": prompt, "completion": answer(prompt), "family": family}


def _match(prompt) -> tuple[str, re.Match]:
    if isinstance(prompt, str):
        for family, pattern in _PATTERNS.items():
            m = pattern.fullmatch(prompt)
            if m:
                return family, m
    raise ValueError(f"not a prompt of the built-in task: {prompt!r} (the families are phrased "
                     f"'Reverse the word: {{w}}', 'Sort the letters of: {{w}}', 'Uppercase: {{phrase}}', "
                     f"'What is {{a}} + {{b}}?', 'How many letters are in: {{w}}'; w: {WORD_LENGTHS[0]}-"
                     f"{WORD_LENGTHS[1]} lowercase letters, a, b: 0-{MAX_NUMBER}, phrase: {PHRASE_WORDS[0]}-"
                     f"{PHRASE_WORDS[1]} words)")


def family_of(prompt: str) -> str:
    """The family a prompt belongs to; ValueError naming the prompt if it is none of the five forms."""
    return _match(prompt)[0]


def answer(prompt: str) -> str:
    """The one correct response to a prompt of the five forms (exact phrasing, exact ranges);
    ValueError naming the prompt otherwise."""
    family, m = _match(prompt)
    if family == "reverse":
        return m[1][::-1]
    if family == "sort":
        return "".join(sorted(m[1]))
    if family == "uppercase":
        return m[1].upper()
    if family == "add":
        return str(int(m[1]) + int(m[2]))
    return str(len(m[1]))


def is_correct(prompt: str, response: str) -> bool:
    """Whether ``response`` is the answer, exactly, once surrounding whitespace is stripped."""
    return response.strip() == answer(prompt)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest single-character insertions, deletions and substitutions
    that turn ``a`` into ``b``. Dynamic programming over two rows, O(len(a) * len(b)) time."""
    if len(a) < len(b):
        a, b = b, a                      # the shorter string makes the row
    prev = list(range(len(b) + 1))       # distances from a[:0] to every prefix of b
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1,                 # delete ca
                           cur[j - 1] + 1,              # insert cb
                           prev[j - 1] + (ca != cb)))   # substitute (or keep) ca
        prev = cur
    return prev[-1]


def _score(target: str, response: str) -> tuple:
    """Smaller is better: not correct, distance from the answer, length (surrounding whitespace
    counts against length but not against correctness or distance)."""
    stripped = response.strip()
    return (stripped != target, edit_distance(stripped, target), len(response))


def judge(prompt: str, response_a: str, response_b: str) -> float:
    """The scripted rater: 0 if ``response_a`` is preferred, 1 if ``response_b`` is, 0.5 for a tie.
    Prefers a correct response, then the one closer to the answer (edit distance), then the shorter;
    ties only when both are equal on all three. Symmetric: judge(p, a, b) == 1 - judge(p, b, a)."""
    target = answer(prompt)
    sa, sb = _score(target, response_a), _score(target, response_b)
    return 0 if sa < sb else 1 if sb < sa else 0.5


def split_of(prompt: str) -> str:
    """The split a prompt belongs to: a fixed hash of its text (BLAKE2b), so the same for every seed,
    cut by SPLIT_FRACTIONS."""
    u = int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "little") / 2.0 ** 64
    edge = 0.0
    for split in SPLITS:
        edge += SPLIT_FRACTIONS[split]
        if u < edge:
            return split
    return SPLITS[-1]


_add_capacity: dict[str, int] = {}


def _capacity(family: str, split: str) -> float:
    """How many distinct prompts of ``family`` fall in ``split``: counted for "add" ((MAX_NUMBER + 1) ** 2
    prompts in all, hashed once and remembered), unbounded in practice for the word families."""
    if family != "add":
        return float("inf")
    if not _add_capacity:
        for a in range(MAX_NUMBER + 1):
            for b in range(MAX_NUMBER + 1):
                s = split_of(f"What is {a} + {b}?")
                _add_capacity[s] = _add_capacity.get(s, 0) + 1
    return _add_capacity.get(split, 0)


def task_split(split: str, n: int, seed: int = 0, families=FAMILIES) -> list[dict]:
    """``n`` distinct examples (``make_example`` dicts) of one split, for a seed.

    - disjoint: an example is kept only if ``split_of(prompt) == split``, so no prompt is ever in two
      splits, for any seeds;
    - balanced: families take turns in the order given (round-robin), so their counts differ by at
      most one;
    - deterministic and stable: each family draws from its own stream, seeded by (seed, split,
      family), so the first k examples of a family are the same for any ``n`` and any ``families``
      list that includes it (a longer list extends a shorter one).
    Within a split prompts are distinct too. ValueError when a family cannot fill its share (only
    "add" is finite: 10,000 prompts in all, about 80% / 10% / 10% per split)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    families = (families,) if isinstance(families, str) else tuple(families)
    if not families:
        raise ValueError("families is empty")
    for f in families:
        _check_family(f)
    if len(set(families)) != len(families):
        raise ValueError(f"families has repeats: {families}")
    shares = {f: n // len(families) + (i < n % len(families)) for i, f in enumerate(families)}
    for f, k in shares.items():
        if k > _capacity(f, split):
            raise ValueError(f"the {split!r} split has only {_capacity(f, split)} distinct {f!r} prompts; "
                             f"{k} were asked for (n={n} over {len(families)} families)")
    per_family = {}
    for f, k in shares.items():
        rng = np.random.default_rng([seed, SPLITS.index(split), FAMILIES.index(f)])
        seen, drawn = set(), []
        while len(drawn) < k:
            prompt = make_prompt(f, rng)
            if prompt not in seen and split_of(prompt) == split:
                seen.add(prompt)
                drawn.append({"prompt": prompt, "completion": answer(prompt), "family": f})
        per_family[f] = drawn
    return [per_family[families[i % len(families)]][i // len(families)] for i in range(n)]
