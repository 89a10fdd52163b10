"""`tinygrad-lm inspect`: one self-contained HTML page about what a model does with a prompt.

The page (tinygrad_lm.lens.report) shows the prompt's tokens shaded by surprisal, the top-k next
tokens at every position, attention heatmaps with a layer and head selector, the logit-lens grid
and the embedding neighbours of the prompt's tokens. It loads nothing from the network, so it can be
mailed or opened offline. --png-dir writes the same pictures as PNG files (needs matplotlib)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .common import UsageError, add_adapter_args, add_model_args, compile_notice, load_source


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="an HTML page of what the model does with a prompt: tokens, next-token "
                                       "table, attention, logit lens, embedding neighbours")
    add_model_args(p, "inspect")
    add_adapter_args(p)
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text to look inside")
    p.add_argument("--out", default="report.html", metavar="PATH", help="the HTML file to write")
    p.add_argument("--png-dir", "--png_dir", dest="png_dir", default=None, metavar="DIR",
                   help="also write the pictures as PNG files here (needs matplotlib: the `plot` extra)")
    p.add_argument("--top-k", "--top_k", dest="top_k", type=int, default=5, metavar="K",
                   help="next tokens shown per position")
    p.add_argument("--max-tokens", "--max_tokens", dest="max_tokens", type=int, default=64, metavar="N",
                   help="show the prompt's first N tokens only (the page says when it was cut)")
    p.add_argument("--layers", type=int, nargs="+", default=None, metavar="L",
                   help="embed the attention of these layers (default: all when they fit ~1M weights, "
                        "else evenly spaced ones)")
    p.add_argument("--neighbours", type=int, default=5, metavar="N",
                   help="embedding neighbours per distinct prompt token (0: none)")
    p.add_argument("--device", default="cpu", metavar="{cpu,cuda}", help="where to run")


def run(args) -> int:
    from ..lens.report import collect, render_html, write_pngs
    if args.top_k < 1 or args.max_tokens < 1:
        raise UsageError(f"--top-k and --max-tokens must be >= 1, got {args.top_k} and {args.max_tokens}")
    if args.neighbours < 0:
        raise UsageError(f"--neighbours must be >= 0, got {args.neighbours}")
    if not args.prompt:
        raise UsageError("--prompt is empty: give the text to look inside")
    if args.png_dir is not None and importlib.util.find_spec("matplotlib") is None:
        # before the model loads: a missing extra should not cost a minute of loading first
        raise UsageError("--png-dir needs matplotlib: pip install 'tinygrad-lm[plot]'")
    out = Path(args.out)
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give the HTML file's path")
    model, tok = load_source(args.ckpt, args.model, args.device, args.adapter, args.quantize)
    compile_notice(args.device)
    data = collect(model, tok, args.prompt, k=args.top_k, max_tokens=args.max_tokens, layers=args.layers,
                   neighbours=args.neighbours, title=f"{args.ckpt or args.model}: {args.prompt[:60]!r}")
    page = render_html(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    heads = next(iter(data.patterns.values())).shape[0] if data.patterns else 0
    print(f"wrote {out} ({out.stat().st_size / 1024:,.0f} KiB): {data.ids.size} tokens, attention of "
          f"{len(data.attn_layers)} layers x {heads} heads, logit lens of {len(data.lens_rows)} rows")
    for note in data.notes:
        print(f"  note: {note}")
    if args.png_dir is not None:
        pngs = write_pngs(data, args.png_dir)
        print(f"wrote {len(pngs)} PNG files to {args.png_dir}")
    return 0
