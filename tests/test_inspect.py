"""The inspect report (tinygrad_lm.lens.report) and `tinygrad-lm inspect`: the page is one file that
loads nothing from the network, shows every token escaped, embeds the attention run_with_cache
computes and the numbers of the lens's analyses; the command runs end to end on a tiny checkpoint
and turns bad input into exit code 2. An optional test opens the page in headless Chromium (from
Debian's `chromium` package, driven over the DevTools protocol on a pipe: no Python package needed),
switches the layer and head selectors and watches the console; it skips without Chromium."""
from __future__ import annotations

import base64
import fcntl
import html
import importlib.util
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser

import numpy as np
import pytest

import tinygrad_lm as tg
from tinygrad_lm import cli, lens
from tinygrad_lm.checkpoint import save_checkpoint
from tinygrad_lm.lens import report
from tinygrad_lm.models import GPT, GPTConfig
from tinygrad_lm.peft import PromptTuningConfig, get_peft_model
from tinygrad_lm.tokenizers import ByteTokenizer, CharTokenizer

FAMILIES = {
    "gpt2": {},
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, bias=False, tie_weights=False),
}
L, NH = 2, 4
# Whole tokens that would break a page pasted in unescaped: a script end, markup, an entity, quotes,
# a newline; and "é" (2 bytes: each byte alone is not UTF-8, so its token shows as \xc3, \xa9).
SPECIALS = ["</script><script>alert(1)</script>", '<b>&amp;"\'\n', "<!--"]
PROMPT = 'Hi <!--</script><script>alert(1)</script> é & <b>&amp;"\'\n "x"\t'


class SpecialsAllowed:
    """The byte tokenizer reading special tokens in the prompt as whole tokens (the page's worst case)."""

    def __init__(self):
        self.tok = ByteTokenizer(SPECIALS)
        self.decode_bytes, self.decode, self.vocab_size = self.tok.decode_bytes, self.tok.decode, self.tok.vocab_size

    def encode(self, text):
        return self.tok.encode(text, allowed_special="all")


def model_of(family, vocab, block_size=64, seed=0):
    tg.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=L, n_head=NH, n_embd=32,
                          **FAMILIES[family])).eval()
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():   # sizeable weights: patterns far from uniform
        base = 1.0 if p.ndim == 1 and name.endswith("weight") else 0.0
        p.data[...] = base + rng.normal(0.0, 0.3, p.shape)
    return model


class Page(HTMLParser):
    """Every start tag with its attributes, and the text of each <script>."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.scripts, self._in_script = [], [], None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append([dict(attrs), ""])

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            self.scripts[-1][1] += data


ALLOWED_TAGS = {"html", "head", "meta", "link", "title", "style", "body", "h1", "h2", "p", "div", "ul", "li",
                "section", "span", "small", "em", "br", "table", "tr", "th", "td", "label", "select", "option",
                "script", "svg", "rect", "g", "circle", "text"}


def attention_data(page: Page) -> dict:
    (text,) = [body for attrs, body in page.scripts if attrs.get("id") == "attention-data"]
    return json.loads(text)


@pytest.fixture(scope="module", params=list(FAMILIES))
def case(request):
    tok = SpecialsAllowed()
    model = model_of(request.param, tok.vocab_size)
    page = report.build_report(model, tok, PROMPT, k=3)
    return model, tok, page


def test_one_file_that_loads_nothing(case):
    _, _, page = case
    assert page.startswith("<!DOCTYPE html>") and page.count("</html>") == 1
    parsed = Page(page)
    assert {tag for tag, _ in parsed.tags} <= ALLOWED_TAGS          # no token became markup
    for tag, attrs in parsed.tags:
        for name in ("src", "href", "xlink:href", "srcset", "data"):
            value = attrs.get(name)
            assert value is None or value.startswith("data:"), (tag, attrs)   # inline only
        assert not (tag == "link" and attrs.get("rel") != "icon"), attrs      # no stylesheet links
    scripts = [attrs for attrs, _ in parsed.scripts]
    assert scripts == [{"type": "application/json", "id": "attention-data"}, {}]   # ours, none with src
    assert not re.search(r"""(src|href)\s*=\s*["']?https?:""", page, re.I)
    assert "@import" not in page and "url(" not in page                 # no CSS fetches either


def test_every_token_escaped(case):
    model, tok, page = case
    ids = tok.encode(PROMPT)
    assert {256, 257, 258} <= set(ids) and 0xC3 in ids                  # whole specials and a lone byte
    for t in ids:
        text = report.token_text(tok, t)
        assert html.escape(report.token_label(text), quote=True) in page, text   # its chip and table cells
        assert html.escape(text, quote=True) in page, text                     # the prompt as it reads
    assert report.token_text(tok, 0xC3) == "\\xc3"                       # a partial character shows its byte
    assert "\n" not in report.token_label(SPECIALS[1]) and "\\n" in report.token_label(SPECIALS[1])
    assert page.count("</script>") == 2 and page.count("<script") == 2 and "<b>" not in page
    assert "<!--" not in page and "alert(1)" in page                    # only as text


def test_embedded_numbers_are_the_lens_analyses(case):
    model, tok, page = case
    ids = np.array([tok.encode(PROMPT)])
    T = ids.shape[1]
    data = attention_data(Page(page))
    _, cache = model.run_with_cache(ids, names=lambda n: n.endswith("hook_pattern"))
    assert data["layers"] == list(range(L)) and len(data["labels"]) == T and data["scale"] == 10 ** report.ROUND
    assert data["labels"] == [report.token_label(report.token_text(tok, t)) for t in ids[0].tolist()]
    for i, layer in enumerate(data["layers"]):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]          # (NH, T, T)
        assert len(data["patterns"][i]) == NH
        for h in range(NH):
            rows = data["patterns"][i][h]
            assert [len(r) for r in rows] == list(range(1, T + 1))        # the causal triangle
            for q in range(T):
                np.testing.assert_allclose(np.array(rows[q]) / data["scale"], pattern[h, q, :q + 1],
                                           atol=0.5 / data["scale"] + 1e-6)
            assert np.all(pattern[h][np.triu_indices(T, 1)] == 0)         # nothing left out above it
    d = report.collect(model, tok, PROMPT, k=3)
    top_ids, top_p = lens.top_k_next_tokens(model, ids, k=3)
    np.testing.assert_array_equal(d.top_ids, top_ids[0])
    np.testing.assert_allclose(d.top_probs, top_p[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(d.losses, lens.token_losses(model, ids)[0], rtol=1e-5)
    grid = lens.logit_lens(model, ids)                                   # (L + 1, 1, T, V)
    np.testing.assert_array_equal(d.lens_ids, grid[:, 0].argmax(-1))
    np.testing.assert_array_equal(d.lens_ids[-1], top_ids[0, :, 0])     # the last row is the model's output
    near, _ = lens.nearest_tokens(model, int(ids[0, 0]), k=5)
    np.testing.assert_array_equal(d.neighbours[int(ids[0, 0])][0], near)
    # the page shows them: the top token's probability and the mean surprisal
    assert f"{d.top_probs[0, 0]:.3f}" in page and f"{d.losses.mean():.3f} nats" in page


def test_caps_are_applied_and_said(monkeypatch):
    tok = SpecialsAllowed()
    model = model_of("gpt2", tok.vocab_size)
    d = report.collect(model, tok, PROMPT, max_tokens=5, layers=[1], neighbours=0)
    assert d.ids.size == 5 and d.attn_layers == [1] and list(d.patterns) == [1] and not d.neighbours
    page = report.render_html(d)
    assert "this page shows its first 5" in page and "layers asked only: 1" in page
    assert [len(p) for p in attention_data(Page(page))["patterns"]] == [NH]
    monkeypatch.setattr(report, "ATTENTION_BUDGET", 1)                  # room for one layer: the first
    d = report.collect(model, tok, PROMPT)
    assert d.attn_layers == [0] and "embedded for 1 of 2 layers (0)" in report.render_html(d)
    with pytest.raises(ValueError, match="outside 0 .. 1"):
        report.collect(model, tok, PROMPT, layers=[2])


def test_soft_prompt_positions_are_labelled():
    tok = SpecialsAllowed()
    model = get_peft_model(model_of("gpt2", tok.vocab_size), PromptTuningConfig(num_virtual_tokens=3))
    d = report.collect(model, tok, "Hi there")
    assert d.virtual == 3 and d.patterns[0].shape == (NH, 3 + 8, 3 + 8) and d.lens_ids.shape == (L + 1, 8)
    page = report.render_html(d)
    labels = attention_data(Page(page))["labels"]
    assert labels[:4] == ["[virtual 0]", "[virtual 1]", "[virtual 2]", "H"] and "soft prompt's virtual" in page


# ---- the command ---------------------------------------------------------------------------------

CHAR_TEXT = "the cat <sat> & \"ran\"\nOK"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A checkpoint as `tinygrad-lm train` writes it, of a tiny Llama-style model with a char tokenizer."""
    tok = CharTokenizer.from_text(CHAR_TEXT)
    model = model_of("llama", tok.vocab_size, block_size=32)
    d = tmp_path_factory.mktemp("inspect") / "run"
    save_checkpoint(d, model.state_dict(), {"model_config": model.config.to_dict(), "tokenizer": tok.to_dict(),
                                            "step": 0})
    return d


def test_cli_end_to_end(tiny_ckpt, tmp_path, capsys):
    out, pngs = tmp_path / "r" / "report.html", tmp_path / "png"
    argv = ["inspect", "--ckpt", str(tiny_ckpt), "--prompt", 'cat <sat> & "ran"', "--out", str(out), "--top-k", "2"]
    code = cli.main(argv + ["--png-dir", str(pngs)])
    if importlib.util.find_spec("matplotlib") is None:                  # the `plot` extra is missing: said plainly
        assert code == 2 and "--png-dir needs matplotlib" in capsys.readouterr().err
        assert cli.main(argv) == 0
    else:
        assert code == 0
        assert sorted(p.name for p in pngs.iterdir()) == ["attention_layer0.png", "attention_layer1.png",
                                                           "embeddings_pca.png", "logit_lens.png", "surprisal.png"]
        assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs.iterdir())
    said = capsys.readouterr().out
    assert f"wrote {out}" in said and "17 tokens, attention of 2 layers x 4 heads, logit lens of 3 rows" in said
    assert os.listdir(out.parent) == ["report.html"]                    # one file
    page = out.read_text(encoding="utf-8")
    assert "&lt;" in page and "&amp;" in page and "&quot;" in page and "<sat>" not in page
    assert "Llama-style" in page


@pytest.mark.parametrize("args, fragment", [
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "the cat sat " * 3], "the prompt is 36 tokens but the model's context holds 32"),
    (["--prompt", "cat", "--top-k", "0"], "--top-k and --max-tokens must be >= 1"),
    (["--prompt", "cat", "--layers", "5"], "layer 5 is outside 0 .. 1"),
    (["--prompt", "dog"], "a character-level model knows only the characters"),   # no 'd', 'o', 'g'
])
def test_cli_bad_input(tiny_ckpt, tmp_path, capsys, args, fragment):
    out = tmp_path / "r.html"
    assert cli.main(["inspect", "--ckpt", str(tiny_ckpt), "--out", str(out)] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygrad-lm: error: ") and fragment in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_inspect_is_a_command():
    assert cli.COMMANDS["inspect"].__name__ == "tinygrad_lm.cli.inspect"


# ---- in a real browser ---------------------------------------------------------------------------

def chromium_path():
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe): it reads
    our commands on its fd 3 and writes replies and events on its fd 4, each a JSON text ended by NUL."""

    def __init__(self, exe, profile_dir, timeout=60.0):
        self.timeout, self.events, self.next_id, self.buffer = timeout, [], 0, b""
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        # A small Python step puts the two pipe ends on fds 3 and 4, then becomes Chromium (execv). Ends
        # numbered 10 and up first, so that putting one on 3 or 4 cannot close the other.
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser, from_browser)]
        for fd in (to_browser, from_browser):
            os.close(fd)
        place = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
                 "os.execv(sys.argv[3], sys.argv[3:])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", place, *map(str, high), exe, "--headless", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={profile_dir}", "about:blank"],
            pass_fds=high, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in high:
            os.close(fd)

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._write, json.dumps(msg).encode() + b"\0")
        reply = self.wait(lambda m: m.get("id") == msg["id"])
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait(self, want):
        """Read messages until one satisfies want (events seen on the way are kept in self.events)."""
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if want(msg):
                    return msg
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.proc.poll()})")
            self.buffer += chunk

    def event(self, method, session):
        """The first event of this kind from the session: one already seen, or the next to come."""
        match = lambda m: m.get("method") == method and m.get("sessionId") == session   # noqa: E731
        return next((e for e in self.events if match(e)), None) or self.wait(match)

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)


def console_errors(events, session):
    """Uncaught exceptions, console.error/assert calls and browser log errors of the page."""
    out = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            out.append(p["exceptionDetails"].get("exception", {}).get("description") or p["exceptionDetails"]["text"])
        elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            out.append(p["entry"]["text"])
    return out


def test_report_in_headless_chromium(tmp_path):
    exe = chromium_path()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the page is checked without it")
    tok = SpecialsAllowed()
    model = model_of("llama", tok.vocab_size)
    path = tmp_path / "report.html"
    path.write_text(report.build_report(model, tok, PROMPT), encoding="utf-8")
    T = len(tok.encode(PROMPT))
    browser = Chromium(exe, tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        s = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=s)
        browser.send("Page.navigate", {"url": path.as_uri()}, session=s)
        browser.event("Page.loadEventFired", s)

        def js(expression):
            r = browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=s)
            assert "exceptionDetails" not in r, r
            return r["result"].get("value")

        def heatmap():
            return js("""(() => { const svg = document.querySelector('#heatmap svg');
                return {layer: svg.dataset.layer, head: svg.dataset.head, width: svg.getBoundingClientRect().width,
                        fills: [...svg.querySelectorAll('rect')].map(r => r.getAttribute('fill')).join(' '),
                        cells: svg.querySelectorAll('rect').length,
                        first: svg.querySelector('rect title').textContent}; })()""")

        def choose(select_id, value):
            js(f"""(() => {{ const s = document.getElementById('{select_id}'); s.value = '{value}';
                s.dispatchEvent(new Event('change')); }})()""")

        # it renders: every section laid out, the heatmap drawn with one cell per visible pair
        assert js("[...document.querySelectorAll('section')].map(s => s.id)") == [
            "tokens", "topk", "attention", "lens", "neighbours"]
        assert js("document.body.getBoundingClientRect().height") > 1000
        first = heatmap()
        assert first["layer"] == "0" and first["head"] == "0" and first["width"] > 100
        assert first["cells"] == T * (T + 1) // 2 and first["first"].endswith(": 1.0000")   # position 0 reads itself
        shot = browser.send("Page.captureScreenshot", session=s)["data"]
        assert base64.b64decode(shot).startswith(b"\x89PNG")
        # the selectors switch the heatmap
        choose("head", 2)
        by_head = heatmap()
        assert by_head["head"] == "2" and by_head["fills"] != first["fills"]
        choose("layer", 1)
        by_layer = heatmap()
        assert by_layer["layer"] == "1" and by_layer["head"] == "2" and by_layer["fills"] != by_head["fills"]
        # the page's text shows the tokens as text: no injected element ran or exists
        assert js("document.querySelectorAll('b').length") == 0 and js("typeof window.alert") == "function"
        assert console_errors(browser.events, s) == []
        js("console.error('a control: the console is watched')")
        browser.event("Runtime.consoleAPICalled", s)
        assert console_errors(browser.events, s) == ["a control: the console is watched"]
    finally:
        browser.close()
