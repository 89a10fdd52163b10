"""The inspect report: what the lens shows about one prompt, as one self-contained HTML page (and,
with matplotlib, static PNGs).

    data = collect(model, tokenizer, "The capital of France is")   # every number the page shows
    html = render_html(data)                                        # one string: CSS, SVG, JSON, a little JS
    write_pngs(data, "pngs/")                                       # the same pictures as PNG files
    build_report(model, tokenizer, prompt, ...) == render_html(collect(model, tokenizer, prompt, ...))

collect() runs the model once (run_with_cache of the residual stream and the attention patterns)
and reads everything from that run through the lens's own analyses: top_k for the next-token
table, next_token_losses for the surprisal, logit_lens (on the cached residuals) for the grid,
nearest_tokens_of_each and embedding_pca for the embeddings. Nothing here recomputes them.

The page needs no network: no external script, style, font or image. The attention patterns are
JSON inside the page and a short script draws the chosen layer and head as SVG; every other
picture is drawn here, as HTML tables and inline SVG. Every token string goes through html.escape
(or, inside the JSON, through escapes that keep "</script>" from closing the script)."""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..tensor import host_array
from .analysis import inference, logit_lens, next_token_losses, residual_names, top_k
from .embeddings import embedding_pca, nearest_tokens_of_each
from .hooks import as_gpt, run_with_cache

# How many attention weights the page embeds by default (each ~6 bytes of JSON). Past it, collect()
# keeps evenly spaced layers (the first and the last among them) and the page says which.
ATTENTION_BUDGET = 1_000_000
# The logit lens makes (rows, T, V) logits and top_k their float64 softmax: rows are read in chunks
# of at most this many values (~200 MB of temporaries).
LENS_CHUNK_VALUES = 8_000_000
ROUND = 4   # decimals of the embedded attention weights


@dataclass
class ReportData:
    """Every number and string the report shows (NumPy arrays, one sequence)."""
    title: str
    description: str                 # the model in one line: family, sizes
    ids: np.ndarray                  # (T,) the prompt's token ids (after the --max-tokens cap)
    texts: dict                      # {token id: its text} for every token the page names
    top_ids: np.ndarray              # (T, k) the likeliest next tokens at each position
    top_probs: np.ndarray            # (T, k)
    losses: np.ndarray               # (T - 1,) surprisal of tokens 1 .. T-1, nats
    lens_rows: list                  # names of the logit-lens rows: "embeddings", "block 0", ...
    lens_ids: np.ndarray             # (rows, T) the top token of each layer's residual at each position
    lens_probs: np.ndarray           # (rows, T) its probability
    attn_layers: list                # the layers whose patterns are embedded
    patterns: dict                   # {layer: (n_head, P + T, P + T)} attention weights
    virtual: int                     # P: soft-prompt positions that come first in the patterns
    neighbours: dict                 # {token id: (neighbour ids (n,), cosines (n,))}
    pca: tuple | None                # (token ids (N,), coordinates (N, 2), variance shares (2,)) or None
    notes: list = field(default_factory=list)   # what was capped or left out, said on the page


# ---- token text --------------------------------------------------------------------------------

def token_text(tokenizer, token: int) -> str:
    """A token's text as it appears in the prompt. A byte-level token that is only part of a UTF-8
    character shows its bytes as \\xNN (decode alone would give an uninformative U+FFFD)."""
    decode_bytes = getattr(tokenizer, "decode_bytes", None)
    if decode_bytes is not None:
        return decode_bytes([int(token)]).decode("utf-8", "backslashreplace")
    return tokenizer.decode([int(token)])


def token_label(text: str) -> str:
    """A token's text for a table cell: newlines, tabs and other invisible characters spelled
    as escapes (\\n, \\t, \\x0b, \\u200b); spaces stay (cells keep them visible with white-space: pre)."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii") for c in text)


# ---- collecting --------------------------------------------------------------------------------

def collect(model, tokenizer, prompt: str, *, k: int = 5, max_tokens: int = 64, layers=None,
            neighbours: int = 5, title: str | None = None) -> ReportData:
    """Run the model once on the prompt and gather what the report shows.

    k: next tokens per position; max_tokens: the prompt is cut to its first max_tokens tokens (the
    page says so); layers: the blocks whose attention patterns are embedded (default: all of them
    when they fit ATTENTION_BUDGET weights, else evenly spaced ones); neighbours: embedding
    neighbours per distinct prompt token (0: none). Raises ValueError for an empty prompt or one
    longer than the model's context."""
    gpt = as_gpt(model)
    cfg, P = gpt.config, gpt.num_virtual_tokens
    if k < 1 or max_tokens < 1 or neighbours < 0:
        raise ValueError(f"need top-k >= 1, max-tokens >= 1 and neighbours >= 0; got {k}, {max_tokens}, {neighbours}")
    if not prompt:
        raise ValueError("the prompt is empty: give the text to look inside")
    ids = np.asarray(tokenizer.encode(prompt), dtype=np.int64)
    if ids.size == 0:
        raise ValueError(f"the prompt {prompt!r} encodes to no tokens")
    room = cfg.block_size - P
    if ids.size > room:
        raise ValueError(f"the prompt is {ids.size} tokens but the model's context holds {room}: shorten it")
    notes = []
    if ids.size > max_tokens:
        notes.append(f"The prompt has {ids.size} tokens; this page shows its first {max_tokens} (--max-tokens).")
        ids = ids[:max_tokens]
    T = ids.size
    attn_layers = _attention_layers(cfg.n_layer, cfg.n_head, P + T, layers, notes)

    lens_names = residual_names(cfg.n_layer)
    names = lens_names + [f"blocks.{layer}.attn.hook_pattern" for layer in attn_layers]
    with inference(model):
        logits, cache = run_with_cache(model, ids[None], names)
    logits = host_array(logits)                                            # (1, T, V)
    top_ids, top_probs = top_k(logits[0], k)                               # (T, k)
    losses = next_token_losses(logits[:, :-1], ids[None, 1:])[0]           # (T - 1,)

    # the logit lens over the cached residuals, a few rows at a time (each row is T x V logits)
    chunk = max(1, LENS_CHUNK_VALUES // (T * cfg.vocab_size))
    lens_ids, lens_probs = [], []
    for start in range(0, len(lens_names), chunk):
        rows = logit_lens(model, ids[None], layers=range(start, min(start + chunk, len(lens_names))), cache=cache)
        best, p = top_k(rows[:, 0], 1)                                     # (rows, T, 1)
        lens_ids.append(best[..., 0])
        lens_probs.append(p[..., 0])
    patterns = {layer: cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in attn_layers}

    distinct = list(dict.fromkeys(ids.tolist()))                           # first appearance order
    near, pca = {}, None
    if neighbours:
        n_ids, n_cos = nearest_tokens_of_each(model, distinct, neighbours)
        near = {t: (n_ids[i], n_cos[i]) for i, t in enumerate(distinct)}
    mapped = list(dict.fromkeys(distinct + [int(t) for row, _ in near.values() for t in row]))
    if len(mapped) >= 2:
        coords, share = embedding_pca(model, mapped)
        pca = (np.array(mapped), coords, share)

    shown = set(ids.tolist()) | set(top_ids.ravel().tolist()) | set(mapped)
    shown |= {int(t) for part in lens_ids for t in part.ravel().tolist()}
    texts = {t: token_text(tokenizer, t) for t in sorted(shown)}
    return ReportData(title=title or "tinygrad-lm inspect", description=_describe(model), ids=ids, texts=texts,
                      top_ids=top_ids, top_probs=top_probs, losses=losses,
                      lens_rows=["embeddings"] + [f"after block {layer}" for layer in range(cfg.n_layer)],
                      lens_ids=np.concatenate(lens_ids), lens_probs=np.concatenate(lens_probs),
                      attn_layers=attn_layers, patterns=patterns, virtual=P, neighbours=near, pca=pca, notes=notes)


def _attention_layers(n_layer: int, n_head: int, T: int, layers, notes: list) -> list:
    """The layers whose patterns the page embeds: those asked, else all or evenly spaced ones
    within ATTENTION_BUDGET weights (each layer: n_head causal T x T triangles)."""
    if layers is not None:
        layers = sorted({int(layer) for layer in layers})
        bad = [layer for layer in layers if not 0 <= layer < n_layer]
        if bad:
            raise ValueError(f"layer {bad[0]} is outside 0 .. {n_layer - 1}")
        if len(layers) < n_layer:
            notes.append(f"Attention is embedded for the layers asked only: {', '.join(map(str, layers))} (--layers).")
        return layers
    per_layer = n_head * T * (T + 1) // 2
    fit = max(1, ATTENTION_BUDGET // per_layer)
    if fit >= n_layer:
        return list(range(n_layer))
    chosen = sorted(set(np.linspace(0, n_layer - 1, fit).round().astype(int).tolist()))
    notes.append(f"Attention is embedded for {len(chosen)} of {n_layer} layers ({', '.join(map(str, chosen))}), "
                 f"to keep the page small; --layers chooses others.")
    return chosen


def _describe(model) -> str:
    gpt = as_gpt(model)
    c = gpt.config
    family = "Llama-style (RoPE, RMSNorm, SwiGLU)" if c.pos == "rope" else "GPT-2-style"
    gqa = f", {c.n_kv_head} KV heads" if c.n_kv_head != c.n_head else ""
    soft = f", a soft prompt of {gpt.num_virtual_tokens} virtual tokens" if gpt.num_virtual_tokens else ""
    return (f"{family}: {c.n_layer} layers, {c.n_head} heads{gqa}, {c.n_embd} wide, vocabulary {c.vocab_size:,}, "
            f"context {c.block_size:,}, {gpt.num_parameters():,} parameters{soft}")


def build_report(model, tokenizer, prompt: str, **options) -> str:
    """The whole page for one prompt, as a string: render_html(collect(model, tokenizer, prompt, **options))."""
    return render_html(collect(model, tokenizer, prompt, **options))


# ---- HTML --------------------------------------------------------------------------------------

def esc(s) -> str:
    return html.escape(str(s), quote=True)


def _shade(v: float, rgb: tuple) -> str:
    """Background for a value v in [0, 1]: white at 0, the colour rgb at 1, and a text colour
    that stays readable on it."""
    v = float(min(max(v, 0.0), 1.0))
    r, g, b = (round(255 + (c - 255) * v) for c in rgb)
    return f"background:rgb({r},{g},{b});color:{'#fff' if v > 0.55 else '#000'}"


BLUE, GREEN, RED = (8, 48, 107), (0, 109, 44), (165, 15, 21)
LOSS_SCALE = 10.0   # nats at which the loss colour is full red (p = e^-10 ~ 0.00005)


def _tok(data: ReportData, token: int, extra: str = "") -> str:
    """A token as a chip: its label, its id and text in the tooltip."""
    text = data.texts[int(token)]
    return (f'<span class="tok"{extra} title="id {int(token)}: {esc(repr(text))}">'
            f'{esc(token_label(text))}</span>')


def _json_for_script(obj) -> str:
    """JSON safe inside <script>: no "<", ">" or "&" (so "</script>" or "<!--" in a token cannot end or
    change the script element) and no U+2028/U+2029 (line ends to older JavaScript)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    for c, e in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(c, e)
    return text


def attention_json(data: ReportData) -> dict:
    """What the page's script draws: the labels of the positions and, per embedded layer and head,
    the causal rows of the pattern (row q: its weights on keys 0 .. q) as whole numbers of units
    of 10^-ROUND (0.1234 -> 1234; weight = value / scale): a third less JSON than decimals."""
    labels = [f"[virtual {i}]" for i in range(data.virtual)] + [token_label(data.texts[t]) for t in data.ids.tolist()]
    scale = 10 ** ROUND
    units = [np.rint(data.patterns[layer].astype(np.float64) * scale).astype(np.int64) for layer in data.attn_layers]
    return {"labels": labels, "layers": data.attn_layers, "scale": scale,
            "patterns": [[[p[h, q, :q + 1].tolist() for q in range(p.shape[1])] for h in range(p.shape[0])]
                         for p in units]}


def _prompt_section(data: ReportData) -> str:
    """The prompt as it reads, each token shaded by its surprisal (the first has nothing before it)."""
    spans = [f'<span class="ptok first" title="position 0, id {int(data.ids[0])}: the first token, '
             f'nothing predicts it">{esc(data.texts[int(data.ids[0])])}</span>']
    for t, (token, loss) in enumerate(zip(data.ids[1:].tolist(), data.losses.tolist()), start=1):
        spans.append(f'<span class="ptok" style="{_shade(loss / LOSS_SCALE, RED)}" title="position {t}, id {token}: '
                     f'{loss:.2f} nats, p = {np.exp(-loss):.4f}">{esc(data.texts[token])}</span>')
    summary = ""
    if data.losses.size:
        mean = float(data.losses.mean())
        summary = (f"<p>Mean surprisal {mean:.3f} nats per token (perplexity {np.exp(mean):.2f}) over the "
                   f"{data.losses.size} tokens after the first. White: expected; full red: {LOSS_SCALE:g} nats "
                   f"or more (p &le; {np.exp(-LOSS_SCALE):.0e}). Hover a token for its number.</p>")
    chips = " ".join(f'<span class="chip"><small>{t}</small>{_tok(data, token)}<small>{token}</small></span>'
                     for t, token in enumerate(data.ids.tolist()))
    return (f'<section id="tokens"><h2>The prompt, token by token</h2>{summary}'
            f'<div class="prompt">{"".join(spans)}</div>'
            f'<p>The {data.ids.size} tokens (position above, id below):</p><div class="chips">{chips}</div></section>')


def _top_k_section(data: ReportData) -> str:
    k = data.top_ids.shape[1]
    head = "".join(f"<th>#{i + 1}</th>" for i in range(k))
    rows = []
    for t, token in enumerate(data.ids.tolist()):
        actual = int(data.ids[t + 1]) if t + 1 < data.ids.size else None
        cells = []
        for cand, p in zip(data.top_ids[t].tolist(), data.top_probs[t].tolist()):
            hit = ' class="hit"' if cand == actual else ""
            cells.append(f'<td{hit} style="{_shade(p, BLUE)}">{_tok(data, cand)} {p:.3f}</td>')
        nxt = _tok(data, actual) if actual is not None else "<em>(end)</em>"
        rows.append(f"<tr><td>{t}</td><td>{_tok(data, token)}</td><td>{nxt}</td>{''.join(cells)}</tr>")
    return (f'<section id="topk"><h2>What the model expects next</h2><p>At each position, the {k} likeliest '
            f'next tokens and their probabilities. A box marks the token that actually came next.</p>'
            f'<table class="grid"><tr><th>pos</th><th>token</th><th>actual next</th>{head}</tr>'
            f'{"".join(rows)}</table></section>')


def _attention_section(data: ReportData) -> str:
    nh = next(iter(data.patterns.values())).shape[0] if data.patterns else 0
    if not nh:
        return '<section id="attention"><h2>Attention</h2><p>No layer was asked for.</p></section>'
    layer_options = "".join(f'<option value="{i}">layer {layer}</option>' for i, layer in enumerate(data.attn_layers))
    head_options = "".join(f'<option value="{h}">head {h}</option>' for h in range(nh))
    virtual = (f" The first {data.virtual} positions are the soft prompt's virtual tokens." if data.virtual else "")
    return (f'<section id="attention"><h2>Attention: which tokens each token reads</h2>'
            f'<p>Row: the token attending (the query); column: the token it reads (the key). Each row sums to 1; '
            f'a token sees only itself and the tokens before it. Weights rounded to {ROUND} decimals; hover a cell '
            f'for its value.{virtual}</p>'
            f'<label>Layer <select id="layer">{layer_options}</select></label> '
            f'<label>Head <select id="head">{head_options}</select></label>'
            f'<div id="heatmap"></div>'
            f'<script type="application/json" id="attention-data">{_json_for_script(attention_json(data))}</script>'
            f'</section>')


def _lens_section(data: ReportData) -> str:
    head = "".join(f"<th>{t}<br>{_tok(data, token)}</th>" for t, token in enumerate(data.ids.tolist()))
    rows = []
    for name, ids, probs in zip(data.lens_rows, data.lens_ids.tolist(), data.lens_probs.tolist()):
        cells = []
        for t, (token, p) in enumerate(zip(ids, probs)):
            hit = ' class="hit"' if t + 1 < data.ids.size and token == int(data.ids[t + 1]) else ""
            cells.append(f'<td{hit} style="{_shade(p, GREEN)}" title="p = {p:.4f}">'
                         f'{esc(token_label(data.texts[token]))}<br><small>{p:.2f}</small></td>')
        rows.append(f'<tr><th class="row">{esc(name)}</th>{"".join(cells)}</tr>')
    return (f'<section id="lens"><h2>Logit lens: the prediction layer by layer</h2><p>Each row reads the residual '
            f'stream after one more block through the model\'s own final norm and output layer: the top next token '
            f'and its probability at each position. The last row is the model\'s output. A box marks the token '
            f'that actually came next.</p><div class="scroll"><table class="grid lens"><tr><th></th>{head}</tr>'
            f'{"".join(rows)}</table></div></section>')


def _neighbours_section(data: ReportData) -> str:
    if not data.neighbours:
        return ""
    n = len(next(iter(data.neighbours.values()))[0])
    rows = "".join(f"<tr><td>{_tok(data, token)}</td>"
                   + "".join(f'<td style="{_shade(max(c, 0), BLUE)}">{_tok(data, other)} {c:.3f}</td>'
                             for other, c in zip(ids.tolist(), cos.tolist())) + "</tr>"
                   for token, (ids, cos) in data.neighbours.items())
    return (f'<section id="neighbours"><h2>Embedding neighbours</h2><p>For each distinct prompt token, the {n} '
            f'tokens whose embedding vectors point most nearly the same way (cosine similarity): tokens used alike '
            f'get similar vectors.</p><table class="grid"><tr><th>token</th>'
            + "".join(f"<th>#{i + 1}</th>" for i in range(n)) + f"</tr>{rows}</table>{_pca_svg(data)}</section>")


def _pca_svg(data: ReportData) -> str:
    """The prompt's tokens (dots) and their neighbours (rings) on the first two principal axes of
    their embeddings."""
    if data.pca is None:
        return ""
    ids, xy, share = data.pca
    W, H, pad = 640, 420, 40
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1)
    px = pad + (xy - lo) / span * [W - 2 * pad, H - 2 * pad]
    prompt = set(data.ids.tolist())
    marks = []
    for token, (x, y) in zip(ids.tolist(), px.tolist()):
        y = H - y                                                          # SVG's y grows downwards
        dot = 'fill="#08306b"' if token in prompt else 'fill="none" stroke="#6a6a6a"'
        label = esc(token_label(data.texts[token]))
        marks.append(f'<g><title>id {token}: {esc(repr(data.texts[token]))}</title><circle cx="{x:.1f}" cy="{y:.1f}" '
                     f'r="4" {dot}/><text x="{x + 6:.1f}" y="{y + 4:.1f}">{label}</text></g>')
    return (f'<p>The same tokens on the two directions along which their embeddings vary most (PCA: '
            f'{share[0]:.0%} and {share[1]:.0%} of their variance). Dots: prompt tokens; rings: neighbours.</p>'
            f'<svg class="pca" width="{W}" height="{H}" viewBox="0 0 {W} {H}">'
            f'<rect width="{W}" height="{H}" fill="#fafafa" stroke="#ddd"/>{"".join(marks)}</svg>')


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1200px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.notes { background: #fff8e1; border: 1px solid #f0d890; padding: .5em 1em; }
.tok, .ptok, td, th { font-family: ui-monospace, "DejaVu Sans Mono", monospace; white-space: pre; }
.tok { background: #eef; border-radius: 3px; padding: 0 2px; }
.prompt { white-space: pre-wrap; font-size: 1.1em; line-height: 1.9; border: 1px solid #ddd; padding: .5em; }
.ptok { white-space: pre-wrap; border-right: 1px solid #ccc; padding: 1px 0; }
.ptok.first { background: #eee; }
.chips { display: flex; flex-wrap: wrap; gap: 4px; }
.chip { display: inline-flex; flex-direction: column; align-items: center; border: 1px solid #ddd; padding: 2px; }
.chip small { color: #777; font-size: .7em; }
table.grid { border-collapse: collapse; font-size: .85em; }
table.grid td, table.grid th { border: 1px solid #ddd; padding: 2px 5px; text-align: left; }
table.grid td.hit { outline: 2px solid #d95f02; outline-offset: -2px; }
table.grid td .tok { background: transparent; }
table.lens td { text-align: center; } th.row { text-align: right; }
.scroll { overflow-x: auto; }
#heatmap svg text { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 11px; }
svg.pca text { font-family: ui-monospace, monospace; font-size: 11px; }
select { font-size: 1em; margin: .5em .5em .5em 0; }
"""

# Draws the chosen layer and head from the embedded JSON. Token labels go in with textContent, never
# as HTML, so a token cannot inject markup.
SCRIPT = """
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("attention-data").textContent);
  const layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
  const box = document.getElementById("heatmap");
  const NS = "http://www.w3.org/2000/svg";
  const n = data.labels.length;
  const cell = Math.max(6, Math.min(28, Math.floor(640 / n)));
  const short = s => (s.length > 12 ? s.slice(0, 11) + "\\u2026" : s);
  const margin = 110;
  const decimals = Math.round(Math.log10(data.scale));

  function el(name, attrs, text) {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function colour(v) {                        // white at 0 to dark blue at 1, as the tables
    const mix = c => Math.round(255 + (c - 255) * v);
    return "rgb(" + mix(8) + "," + mix(48) + "," + mix(107) + ")";
  }
  function draw() {
    const li = Number(layerSel.value), h = Number(headSel.value);
    const rows = data.patterns[li][h];
    const size = margin + n * cell + 10;
    const svg = el("svg", {width: size, height: size, viewBox: "0 0 " + size + " " + size,
                           "data-layer": data.layers[li], "data-head": h});
    for (let q = 0; q < n; q++) {
      svg.appendChild(el("text", {x: margin - 4, y: margin + q * cell + cell * 0.7, "text-anchor": "end"},
                         short(data.labels[q])));
      const x = margin + q * cell + cell * 0.7;
      svg.appendChild(el("text", {x: x, y: margin - 4, transform: "rotate(-90 " + x + " " + (margin - 4) + ")"},
                         short(data.labels[q])));
      rows[q].forEach((units, k) => {
        const v = units / data.scale;
        const r = el("rect", {x: margin + k * cell, y: margin + q * cell, width: cell, height: cell,
                              fill: colour(v), stroke: "#eee", "stroke-width": 0.5});
        r.appendChild(el("title", {}, data.labels[q] + " (" + q + ") reads " + data.labels[k] + " (" + k + "): " +
                                       v.toFixed(decimals)));
        svg.appendChild(r);
      });
    }
    box.replaceChildren(svg);
  }
  layerSel.addEventListener("change", draw);
  headSel.addEventListener("change", draw);
  draw();
})();
"""


def render_html(data: ReportData) -> str:
    """The page: header, notes on what was capped, then the prompt, the next-token table, attention,
    the logit lens and the embeddings."""
    notes = "".join(f"<li>{esc(n)}</li>" for n in data.notes)
    notes = f'<div class="notes"><ul>{notes}</ul></div>' if notes else ""
    body = (_prompt_section(data) + _top_k_section(data) + _attention_section(data) + _lens_section(data)
            + _neighbours_section(data))
    script = f"<script>{SCRIPT}</script>" if data.patterns else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,">'                             # no favicon request (file:// or not)
            f'<title>{esc(data.title)}</title><style>{CSS}</style></head><body>'
            f'<h1>{esc(data.title)}</h1><p>{esc(data.description)}</p>{notes}{body}{script}</body></html>\n')


# ---- PNG ---------------------------------------------------------------------------------------

def write_pngs(data: ReportData, folder) -> list[Path]:
    """The report's pictures as PNG files in folder (made if missing): surprisal.png, logit_lens.png,
    attention_layer{l}.png per embedded layer (every head), embeddings_pca.png. Needs matplotlib
    (the `plot` extra): ImportError otherwise."""
    import warnings

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def label(token: int) -> str:   # "$" would start mathtext in matplotlib
        return token_label(data.texts[int(token)]).replace("$", r"\$")

    tokens = [label(t) for t in data.ids.tolist()]
    written = []

    def save(fig, name):
        path = folder / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                                # glyphs the font lacks
            fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    T = len(tokens)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * T), 3.5))
    ax.bar(range(1, T), data.losses, color="#a50f15")
    ax.set_xticks(range(T), tokens, rotation=90)
    ax.set_ylabel("surprisal (nats)")
    ax.set_title("-log p(token | the tokens before it)")
    save(fig, "surprisal.png")

    rows = len(data.lens_rows)
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * T), max(3, 0.35 * rows)))
    ax.imshow(data.lens_probs, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    if T * rows <= 2500:                                                   # beyond that the text is unreadable
        for r in range(rows):
            for t in range(T):
                ax.text(t, r, label(data.lens_ids[r, t]), ha="center", va="center", fontsize=6,
                        color="white" if data.lens_probs[r, t] > 0.4 else "black")   # Greens darkens early
    ax.set_xticks(range(T), tokens, rotation=90)
    ax.set_yticks(range(rows), data.lens_rows)
    ax.set_title("logit lens: top next token per layer and position")
    save(fig, "logit_lens.png")

    labels = [f"[virtual {i}]" for i in range(data.virtual)] + tokens
    for layer in data.attn_layers:
        p = data.patterns[layer]
        nh = p.shape[0]
        cols = min(nh, 4)
        fig, axes = plt.subplots((nh + cols - 1) // cols, cols, figsize=(3.2 * cols, 3.2 * ((nh + cols - 1) // cols)),
                                 squeeze=False)
        for h, ax in enumerate(axes.ravel()):
            if h >= nh:
                ax.axis("off")
                continue
            ax.imshow(p[h], cmap="Blues", vmin=0, vmax=1)
            ax.set_title(f"head {h}", fontsize=9)
            if len(labels) <= 32:
                ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
                ax.set_yticks(range(len(labels)), labels, fontsize=6)
        fig.suptitle(f"attention, layer {layer} (row: query, column: key)")
        save(fig, f"attention_layer{layer}.png")

    if data.pca is not None:
        ids, xy, share = data.pca
        prompt = set(data.ids.tolist())
        fig, ax = plt.subplots(figsize=(7, 5))
        inside = np.array([t in prompt for t in ids.tolist()])
        ax.scatter(xy[inside, 0], xy[inside, 1], color="#08306b", label="prompt tokens")
        ax.scatter(xy[~inside, 0], xy[~inside, 1], facecolors="none", edgecolors="#6a6a6a", label="neighbours")
        for token, (x, y) in zip(ids.tolist(), xy.tolist()):
            ax.annotate(label(token), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"PC 1 ({share[0]:.0%})")
        ax.set_ylabel(f"PC 2 ({share[1]:.0%})")
        ax.legend()
        save(fig, "embeddings_pca.png")
    return written
