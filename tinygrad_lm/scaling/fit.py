"""Fitting scaling laws to a sweep, as Hoffmann et al. (2022) do.

Approach 2 (IsoFLOP profiles): for each compute budget C, a parabola of the final loss in log N
through the runs of that budget; its vertex is the compute-optimal N_opt(C) (and a parabola in
log D gives D_opt(C)). Straight lines through log N_opt and log D_opt against log C give the
power laws N_opt = k C^a and D_opt = k' C^b.

Approach 3 (parametric): L(N, D) = E + A / N^alpha + B / D^beta fitted to every run at once, on
log L with the Huber loss (delta 1e-3, robust to the odd outlying run), L-BFGS from Hoffmann et
al.'s grid of initialisations, written as in the paper:

    min over (a, b, e, alpha, beta) of  sum_i Huber_delta( LSE(a - alpha log N_i, b - beta log D_i, e) - log L_i )

with A = exp(a), B = exp(b), E = exp(e). Bootstrap confidence intervals refit resampled runs
(Epoch AI's replication, Besiroglu et al. 2024, showed how much they matter: the paper's own were
implausibly narrow)."""
from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

# Hoffmann et al. (2022), appendix D.2: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1},
# a, b in {0, 5, ..., 25}: 4,500 starting points, the best of which is kept.
HOFFMANN_GRID = {"alpha": np.arange(0, 2.01, 0.5), "beta": np.arange(0, 2.01, 0.5), "e": np.arange(-1, 1.01, 0.5),
                 "a": np.arange(0, 25.1, 5), "b": np.arange(0, 25.1, 5)}
HUBER_DELTA = 1e-3
PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


# ---------------------------------------------------------------- Approach 2

def isoflop_minimum(x, loss) -> dict:
    """The vertex of the parabola loss = c2 (ln x)^2 + c1 ln x + c0 through one IsoFLOP curve:
    {"opt": x at the vertex, "loss": loss there, "coef": (c2, c1, c0), "inside": whether the vertex
    lies within the measured x (outside, it is an extrapolation: the grid missed the minimum)}.
    A curve that does not open upwards has no minimum: ValueError."""
    x, loss = np.asarray(x, float), np.asarray(loss, float)
    if len(np.unique(x)) < 3:
        raise ValueError(f"a parabola needs at least 3 distinct sizes on an IsoFLOP curve, got {len(np.unique(x))}")
    lx = np.log(x)
    c2, c1, c0 = np.polyfit(lx, loss, 2)
    if not c2 > 0:
        raise ValueError(f"the IsoFLOP curve does not curve upwards (quadratic coefficient {c2:.3g}): no minimum")
    v = -c1 / (2 * c2)
    return {"opt": float(math.exp(v)), "loss": float(c0 - c1 * c1 / (4 * c2)), "coef": (float(c2), float(c1), float(c0)),
            "inside": bool(lx.min() <= v <= lx.max())}


def power_law(C, y) -> dict:
    """Least squares line through (ln C, ln y): y = k C^exponent -> {"exponent", "k"}."""
    C, y = np.asarray(C, float), np.asarray(y, float)
    if len(np.unique(C)) < 2:
        raise ValueError(f"a power law needs at least 2 distinct compute budgets, got {len(np.unique(C))}")
    slope, intercept = np.polyfit(np.log(C), np.log(y), 1)
    return {"exponent": float(slope), "k": float(math.exp(intercept))}


def approach2(runs: list[dict]) -> dict:
    """IsoFLOP minima per budget and the power laws through them. runs: dicts with "budget",
    "params", "tokens", "val_loss". -> {"curves": [{budget, n_opt, d_opt, loss, inside, coef_n}],
    "skipped": [(budget, why)], "a", "b", "k_n", "k_d"} (a, b None with fewer than 2 minima)."""
    curves, skipped = [], []
    for budget in sorted({r["budget"] for r in runs}):
        on = [r for r in runs if r["budget"] == budget]
        try:
            n = isoflop_minimum([r["params"] for r in on], [r["val_loss"] for r in on])
            d = isoflop_minimum([r["tokens"] for r in on], [r["val_loss"] for r in on])
        except ValueError as e:
            skipped.append((budget, str(e)))
            continue
        curves.append({"budget": budget, "n_opt": n["opt"], "d_opt": d["opt"], "loss": n["loss"],
                       "inside": n["inside"] and d["inside"], "coef_n": n["coef"], "coef_d": d["coef"]})
    out = {"curves": curves, "skipped": skipped, "a": None, "b": None, "k_n": None, "k_d": None}
    if len(curves) >= 2:
        C = [c["budget"] for c in curves]
        n_law, d_law = power_law(C, [c["n_opt"] for c in curves]), power_law(C, [c["d_opt"] for c in curves])
        out.update(a=n_law["exponent"], k_n=n_law["k"], b=d_law["exponent"], k_d=d_law["k"])
    return out


# ---------------------------------------------------------------- Approach 3

def predict_loss(fit: dict, N, D):
    """L(N, D) = E + A / N^alpha + B / D^beta."""
    return fit["E"] + fit["A"] / np.power(N, fit["alpha"]) + fit["B"] / np.power(D, fit["beta"])


def _objective(theta, lN, lD, lL, delta):
    """Huber loss of log-space residuals and its gradient in (a, b, e, alpha, beta). Divided by
    delta, so that the gradient is O(1) and L-BFGS's tolerances are not met before it has moved
    (the minimiser is the same)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * lN, b - beta * lD, np.full_like(lN, e)])   # (3, n)
    top = terms.max(axis=0)
    w = np.exp(terms - top)                                                   # (3, n)
    total = w.sum(axis=0)
    r = top + np.log(total) - lL                                              # log L_hat - log L
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum() / delta
    dr = np.clip(r, -delta, delta) / delta                                    # d value / d r
    soft = w / total                                                          # d LSE / d term
    grad = np.array([(dr * soft[0]).sum(), (dr * soft[1]).sum(), (dr * soft[2]).sum(),
                     -(dr * soft[0] * lN).sum(), -(dr * soft[1] * lD).sum()])
    return value, grad


def _check_data(N, D, L):
    N, D, L = (np.asarray(v, float).ravel() for v in (N, D, L))
    if not len(N) == len(D) == len(L):
        raise ValueError(f"N, D and L must have one value per run, got lengths {len(N)}, {len(D)}, {len(L)}")
    if len(N) < 5:
        raise ValueError(f"fitting 5 parameters needs at least 5 runs, got {len(N)}")
    for name, v in (("N", N), ("D", D), ("L", L)):
        bad = v[~(np.isfinite(v) & (v > 0))]
        if len(bad):
            raise ValueError(f"{name} must be positive and finite, got {bad[0]!r}")
    return N, D, L


def _minimise(starts, N, D, L, delta) -> list:
    """L-BFGS-B from every start; [(objective, theta)] of each, best first."""
    try:
        from scipy.optimize import minimize
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise ImportError(f"the parametric fit needs scipy and threadpoolctl ({e}): "
                          "pip install -e '.[scaling]'") from None
    logs = (np.log(N), np.log(D), np.log(L), delta)
    results = []
    # One BLAS thread: L-BFGS-B's 5-parameter linear algebra gains nothing from threads, and on two
    # busy cores waking them cost ~1 ms per iteration (15 ms a start instead of 5: the 4,500 starts
    # took a minute longer).
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", RuntimeWarning)   # exp overflow of far-off starts; such starts just lose
        for theta0 in starts:
            res = minimize(_objective, theta0, args=logs, jac=True, method="L-BFGS-B")
            if np.isfinite(res.fun):
                results.append((float(res.fun), res.x))
    if not results:
        raise ValueError("the parametric fit failed from every starting point")
    results.sort(key=lambda fx: fx[0])
    return results


def _grid_starts(grid: dict | None) -> list:
    g = grid or HOFFMANN_GRID
    return [np.array([a, b, e, al, be]) for al, be, e, a, b in
            itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])]


def _as_fit(theta) -> dict:
    a, b, e, alpha, beta = (float(t) for t in theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def fit_parametric(N, D, L, delta: float = HUBER_DELTA, grid: dict | None = None) -> dict:
    """Fit L = E + A / N^alpha + B / D^beta to runs of N parameters trained on D tokens reaching
    loss L, as Hoffmann et al. (2022) do: Huber loss (delta) on log L, L-BFGS from every point
    of ``grid`` (default HOFFMANN_GRID), the best kept. -> {"E", "A", "B", "alpha", "beta"}."""
    N, D, L = _check_data(N, D, L)
    return _as_fit(_minimise(_grid_starts(grid), N, D, L, delta)[0][1])


def bootstrap(N, D, L, n_boot: int = 100, seed: int = 0, delta: float = HUBER_DELTA, grid: dict | None = None,
              level: float = 0.8) -> dict:
    """The parametric fit and bootstrap intervals: runs resampled with replacement n_boot times,
    each refitted from the 8 best distinct minima of the full fit (refitting from all 4,500 grid
    points each time would take 40 minutes or more for the same answer). -> {"fit": {...}, "ci": {name: (lo, hi)}
    for E, A, B, alpha, beta and the exponents a, b, "samples": resamples fitted, "level": level}:
    the (1 - level)/2 and (1 + level)/2 quantiles."""
    N, D, L = _check_data(N, D, L)
    found = _minimise(_grid_starts(grid), N, D, L, delta)
    starts = _distinct([theta for _, theta in found], 8)
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n_boot):
        i = rng.integers(0, len(N), len(N))
        if len(np.unique(i)) >= 5:   # five parameters need five distinct runs
            fit = _as_fit(_minimise(starts, N[i], D[i], L[i], delta)[0][1])
            samples.append(fit | compute_optimal_exponents(fit))
    lo, hi = (1 - level) / 2, (1 + level) / 2
    ci = {k: (float(np.quantile([s[k] for s in samples], lo)), float(np.quantile([s[k] for s in samples], hi)))
          for k in PARAM_NAMES + ("a", "b")} if samples else {}
    return {"fit": _as_fit(found[0][1]), "ci": ci, "samples": len(samples), "level": level}


def _distinct(thetas, k: int) -> list:
    """The first k of thetas (best first) that differ from every earlier one by more than 1e-3."""
    out = []
    for t in thetas:
        if all(np.max(np.abs(t - u)) > 1e-3 for u in out):
            out.append(t)
        if len(out) == k:
            break
    return out


def compute_optimal_exponents(fit: dict) -> dict:
    """N_opt ~ C^a, D_opt ~ C^b for a parametric fit under C = 6 N D: a = beta / (alpha + beta),
    b = alpha / (alpha + beta) (Hoffmann et al. 2022, eq. 4)."""
    s = fit["alpha"] + fit["beta"]
    return {"a": fit["beta"] / s, "b": fit["alpha"] / s}


def fit_runs(runs: list[dict], n_boot: int = 100, seed: int = 0, grid: dict | None = None) -> dict:
    """Both approaches on a sweep's records (sweep.finished_runs): {"runs", "approach2",
    "approach3": the fit with its exponents a, b, "ci" and "bootstrap" (resamples),
    "tokens_per_param": D_opt / N_opt at each IsoFLOP minimum (Approach 2) and at the largest
    budget under C = 6 N D (Approach 3)}. What `scaling fit` prints and writes to fit.json."""
    from .predict import compute_optimal   # predict builds on this module's loss
    N, D, L = ([r[k] for r in runs] for k in ("params", "tokens", "val_loss"))
    a2 = approach2(runs)
    if n_boot > 0:
        boot = bootstrap(N, D, L, n_boot=n_boot, seed=seed, grid=grid)
        a3 = {**boot["fit"], "ci": boot["ci"], "bootstrap": boot["samples"], "level": boot["level"]}
    else:
        a3 = {**fit_parametric(N, D, L, grid=grid), "ci": {}, "bootstrap": 0}
    a3.update(compute_optimal_exponents(a3))
    top = max(r["budget"] for r in runs)
    best = compute_optimal(a3, flops=top)
    return {"runs": len(runs), "approach2": a2, "approach3": a3,
            "tokens_per_param": {"approach2": [c["d_opt"] / c["n_opt"] for c in a2["curves"]],
                                 "approach3": best["tokens"] / best["params"], "approach3_at_flops": top}}
