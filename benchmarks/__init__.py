"""Benchmarks for tinygrad_lm (run as modules: ``python -m benchmarks.bench_train``); see README.md.

This package sets nothing for anyone: a peer (PyTorch, ...) must run with its users' defaults,
and tinygrad_lm with the settings it makes for itself when imported, as its README says to use it
(see benchmarks/peers.py). What happens here is only a copy of the environment the user started
the benchmark with, taken before tinygrad_lm can add its own settings to this process
(OPENBLAS_THREAD_TIMEOUT, OMP_WAIT_POLICY): the worker processes start from that copy."""
import os
import sys

USER_ENV = dict(os.environ)
# False when tinygrad_lm was imported before this package (a test, an interactive session): the
# copy may then hold tinygrad_lm's settings, and benchmarks.peers drops every variable it might have set.
USER_ENV_IS_CLEAN = "tinygrad_lm" not in sys.modules
