"""The compute-optimal calculator: from a parametric fit L(N, D) = E + A / N^alpha + B / D^beta and
C = 6 N D, the model size and token count that reach the lowest loss for a compute budget (or the
budget and tokens a model size wants, or the model a token count wants), and the loss there.

Minimising L(N, D) subject to 6 N D = C gives (Hoffmann et al. 2022, eq. 4)

    N_opt(C) = G (C/6)^(beta / (alpha + beta)),   D_opt(C) = (C/6) / N_opt(C),
    G = (alpha A / (beta B))^(1 / (alpha + beta)).

Fits: Chinchilla's own Approach 3 (Hoffmann et al. 2022, eq. 10), Epoch AI's replication of it from
the paper's data (Besiroglu et al. 2024, "Chinchilla Scaling: A replication attempt"), or ours
(DIR/fit.json, written by `tinygrad-lm scaling fit DIR`). A loss from a published fit is nats per
token of MassiveText under that paper's tokenizer; ours is of our corpus and BPE: neither is
comparable with the other, only the shapes (exponents, tokens per parameter) are."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .fit import predict_loss

FIT_FILE = "fit.json"
FLOPS_PER_PARAM_TOKEN = 6   # C = 6 N D, the primers' and both papers' convention

PUBLISHED = {
    "chinchilla": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28,
                   "source": "Hoffmann et al. 2022, Training Compute-Optimal Large Language Models, eq. 10"},
    "epoch": {"E": 1.82, "A": 482.0, "B": 2085.4, "alpha": 0.348, "beta": 0.366,
              "source": "Besiroglu et al. 2024 (Epoch AI), Chinchilla Scaling: A replication attempt"},
}

# Named models: parameters and training tokens as their papers state them; FLOPs are 6 N D.
NAMED_MODELS = (
    ("GPT-3 175B", 175e9, 300e9, "Brown et al. 2020, Language Models are Few-Shot Learners, table D.1 (3.14e23)"),
    ("Gopher 280B", 280e9, 300e9, "Rae et al. 2021, Scaling Language Models: Methods, Analysis & Insights from Gopher"),
    ("Chinchilla 70B", 70e9, 1.4e12, "Hoffmann et al. 2022 (Gopher's budget, 5.76e23)"),
    ("LLaMA-1 7B", 7e9, 1.0e12, "Touvron et al. 2023, LLaMA: Open and Efficient Foundation Language Models"),
    ("LLaMA-1 65B", 65e9, 1.4e12, "Touvron et al. 2023, LLaMA"),
    ("Llama-2 7B", 7e9, 2.0e12, "Touvron et al. 2023, Llama 2: Open Foundation and Fine-Tuned Chat Models"),
    ("Llama-2 70B", 70e9, 2.0e12, "Touvron et al. 2023, Llama 2"),
    ("Llama-3 8B", 8e9, 15e12, "Meta 2024, The Llama 3 Herd of Models (15T+ tokens)"),
    ("Llama-3 70B", 70e9, 15e12, "Meta 2024, The Llama 3 Herd of Models"),
    ("SmolLM2-135M", 135e6, 2.0e12, "Allal et al. 2025, SmolLM2: When Smol Goes Big"),
)


def load_fit(which: str) -> dict:
    """"chinchilla", "epoch", or a sweep folder holding fit.json -> {"E", "A", "B", "alpha", "beta", "source"}."""
    if which in PUBLISHED:
        return dict(PUBLISHED[which])
    path = Path(which)
    if not path.is_dir():
        raise ValueError(f"--fit must be chinchilla, epoch or a sweep folder, got {which!r} (no such folder)")
    if not (path / FIT_FILE).exists():
        raise FileNotFoundError(f"{path} holds no {FIT_FILE}; fit the sweep first: tinygrad-lm scaling fit {path}")
    fit = json.loads((path / FIT_FILE).read_text())["approach3"]
    return {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")} | {"source": f"{path / FIT_FILE} (Approach 3)"}


def compute_optimal(fit: dict, *, params: float | None = None, flops: float | None = None,
                    tokens: float | None = None) -> dict:
    """Exactly one of params, flops, tokens -> the compute-optimal {"params", "tokens", "flops",
    "loss"} through it: the budget's best model, or the budget for which a model size (or a
    token count) is the best one."""
    given = {k: v for k, v in (("params", params), ("flops", flops), ("tokens", tokens)) if v is not None}
    if len(given) != 1:
        raise ValueError(f"give exactly one of params, flops, tokens (got {', '.join(given) or 'none'})")
    (name, value), = given.items()
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    alpha, beta = fit["alpha"], fit["beta"]
    s = alpha + beta
    G = (alpha * fit["A"] / (beta * fit["B"])) ** (1 / s)
    k = FLOPS_PER_PARAM_TOKEN
    try:
        if name == "flops":
            nd = value / k                               # N D
        elif name == "params":
            nd = (value / G) ** (s / beta)               # from N = G (ND)^(beta/s)
        else:
            nd = (value * G) ** (s / alpha)              # from D = (ND)^(alpha/s) / G
    except (OverflowError, ZeroDivisionError):           # a fit with alpha or beta ~ 0: no finite optimum
        nd = math.inf
    if not 0 < nd < math.inf:
        raise ValueError(f"the compute-optimal budget for {name} {value:g} is not a finite number under this fit "
                         f"(alpha {alpha:.3g}, beta {beta:.3g})")
    n = G * nd ** (beta / s)
    d = nd / n
    return {"params": n, "tokens": d, "flops": k * n * d, "loss": float(predict_loss(fit, n, d))}


def named_models_table(fit: dict | None = None) -> list[dict]:
    """NAMED_MODELS with tokens per parameter and 6 N D; with a fit, also its loss and the
    compute-optimal model of the same budget."""
    rows = []
    for name, n, d, source in NAMED_MODELS:
        row = {"model": name, "params": n, "tokens": d, "tokens_per_param": d / n,
               "flops": FLOPS_PER_PARAM_TOKEN * n * d, "source": source}
        if fit is not None:
            best = compute_optimal(fit, flops=row["flops"])
            row.update(loss=float(predict_loss(fit, n, d)), optimal_params=best["params"], optimal_tokens=best["tokens"],
                       optimal_loss=best["loss"])
        rows.append(row)
    return rows
