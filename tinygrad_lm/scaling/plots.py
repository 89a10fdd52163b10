"""PNG figures of a sweep and its fits (matplotlib, the `plot` extra):

    isoflop.png              loss against N per budget with each parabola and its minimum; N_opt(C)
                             and D_opt(C) with the Approach 2 power laws
    loss_vs_n_d.png          loss against N and against D, measured (points) and Approach 3's fit at
                             the same N and D (lines), one colour per budget
    predicted_vs_measured.png  Approach 3's loss against the measured one, with the diagonal"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .fit import predict_loss


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plots(out, runs: list[dict], fit: dict) -> list[Path]:
    """The three PNGs in folder ``out``; [] when matplotlib is not installed. fit: what
    scaling fit writes ({"approach2": ..., "approach3": ...})."""
    if not have_matplotlib():
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(out)
    budgets = sorted({r["budget"] for r in runs})
    colour = {b: plt.cm.viridis(i / max(1, len(budgets) - 1)) for i, b in enumerate(budgets)}
    a2, a3 = fit["approach2"], fit["approach3"]
    paths = []

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    curves = {c["budget"]: c for c in a2["curves"]}
    for b in budgets:
        on = sorted((r for r in runs if r["budget"] == b), key=lambda r: r["params"])
        n = np.array([r["params"] for r in on])
        ax.plot(n, [r["val_loss"] for r in on], "o", color=colour[b], label=f"C = {b:.0e}")
        if b in curves:
            c2, c1, c0 = curves[b]["coef_n"]
            x = np.geomspace(n.min() / 1.5, n.max() * 1.5, 100)
            ax.plot(x, c2 * np.log(x) ** 2 + c1 * np.log(x) + c0, "-", color=colour[b], alpha=0.6)
            ax.plot(curves[b]["n_opt"], curves[b]["loss"], "*", color=colour[b], markersize=14, markeredgecolor="k")
    ax.set(xscale="log", xlabel="parameters N", ylabel="validation loss (nats/token)", title="IsoFLOP curves")
    ax.legend(fontsize=8)
    if a2["curves"]:
        C = np.array([c["budget"] for c in a2["curves"]])
        ax2.plot(C, [c["n_opt"] for c in a2["curves"]], "o", label="N_opt")
        ax2.plot(C, [c["d_opt"] for c in a2["curves"]], "s", label="D_opt")
        if a2["a"] is not None:
            x = np.geomspace(C.min() / 2, C.max() * 2, 50)
            ax2.plot(x, a2["k_n"] * x ** a2["a"], "-", label=f"N_opt ~ C^{a2['a']:.2f}")
            ax2.plot(x, a2["k_d"] * x ** a2["b"], "-", label=f"D_opt ~ C^{a2['b']:.2f}")
    ax2.set(xscale="log", yscale="log", xlabel="training FLOPs C", title="Approach 2: compute-optimal N and D")
    ax2.legend(fontsize=8)
    paths.append(_save(fig, out / "isoflop.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "params", "parameters N"), (axes[1], "tokens", "training tokens D")):
        for b in budgets:
            on = sorted((r for r in runs if r["budget"] == b), key=lambda r: r[key])
            x = np.array([r[key] for r in on])
            ax.plot(x, [r["val_loss"] for r in on], "o", color=colour[b], label=f"C = {b:.0e}")
            ax.plot(x, predict_loss(a3, np.array([r["params"] for r in on]), np.array([r["tokens"] for r in on])),
                    "-", color=colour[b], alpha=0.6)
        ax.set(xscale="log", xlabel=label, ylabel="validation loss (nats/token)")
    axes[0].set_title(f"Approach 3: E {a3['E']:.2f} + {a3['A']:.3g}/N^{a3['alpha']:.2f} + {a3['B']:.3g}/D^{a3['beta']:.2f}")
    axes[0].legend(fontsize=8)
    paths.append(_save(fig, out / "loss_vs_n_d.png"))

    fig, ax = plt.subplots(figsize=(5, 5))
    measured = np.array([r["val_loss"] for r in runs])
    predicted = predict_loss(a3, np.array([r["params"] for r in runs]), np.array([r["tokens"] for r in runs]))
    for b in budgets:
        i = np.array([r["budget"] == b for r in runs])
        ax.plot(measured[i], predicted[i], "o", color=colour[b], label=f"C = {b:.0e}")
    lo, hi = min(measured.min(), predicted.min()), max(measured.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set(xlabel="measured loss", ylabel="Approach 3's loss", title="predicted against measured")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out / "predicted_vs_measured.png"))
    return paths


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
