"""Benchmark sweeps (ml_collections): each module's get_config() holds per-suite defaults and get_sweep() the runs,
as lists of dotted-key overrides built with `benchmarks.sweep`'s product/sweep/zipped."""
