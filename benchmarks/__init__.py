"""Benchmarks for tinygrad_lm (run as modules: ``python -m benchmarks.bench_engine``); see RESULTS.md."""
