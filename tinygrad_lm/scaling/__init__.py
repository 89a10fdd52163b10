"""Scaling laws measured on this machine: IsoFLOP sweeps of small GPTs through the one training
loop, Chinchilla's Approach 2 and 3 fits, and a compute-optimal calculator.

    flops.py    training FLOPs per token as Chinchilla's appendix counts them (and 6N)
    sweep.py    `scaling run`: budgets x model sizes, resumable (DIR/runs.jsonl)
    fit.py      IsoFLOP parabolas and power laws; L = E + A/N^alpha + B/D^beta (Huber, L-BFGS, bootstrap)
    predict.py  compute-optimal N, D and loss from our fit, Chinchilla's or Epoch AI's; named models
    plots.py    the PNGs of `scaling fit`

The parametric fit needs scipy and threadpoolctl (the `scaling` extra), the plots matplotlib
(`plot`); everything else is NumPy."""
from .fit import approach2, bootstrap, compute_optimal_exponents, fit_parametric, fit_runs, isoflop_minimum, predict_loss
from .flops import flops_per_token, param_count
from .plots import write_plots
from .predict import NAMED_MODELS, PUBLISHED, compute_optimal, load_fit, named_models_table
from .sweep import SweepConfig, finished_runs, plan, run_sweep

__all__ = ["approach2", "bootstrap", "compute_optimal_exponents", "fit_parametric", "fit_runs", "isoflop_minimum",
           "predict_loss", "flops_per_token", "param_count", "write_plots", "NAMED_MODELS", "PUBLISHED",
           "compute_optimal", "load_fit", "named_models_table", "SweepConfig", "finished_runs", "plan", "run_sweep"]
