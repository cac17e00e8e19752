"""geolink_jax benchmarks: suites, ml_collections sweeps, JSON result rows and reports (`geolink-jax bench`).

Suites (one module each; `run(cfg) -> row` measures one configuration):
  step        train-step throughput, analytic FLOPs vs XLA cost analysis, MFU      model_step_bench.py  any family
  mask        sparse vs dense encoding: the step at image mask ratios 0 … 0.9      model_step_bench.py  any family
  remat       the step per rematerialisation policy: time over "none", temporaries  model_step_bench.py  any family
  pipeline    input pipeline rate vs what the step consumes (headroom)             input_pipeline_bench.py
  input       host ms·core per sample, pipeline alone: host vs on-device augment    input_cost_bench.py
  preprocess  tile-graph building, vectorised vs the pairwise-`relate` baseline    preprocess_bench.py
  memory      per-device memory for DP / FSDP / TP meshes (compiled analysis)      memory_bench.py      any family
  compile     compile time and recompilations over varied batches                 compile_bench.py     any family
  reference   the official PyTorch GeoLink on the same config, data and batch      reference_bench.py

Each suite's `config` field names a run config (a named config such as demo, geolink_vit_b, mae_demo, or a file).
Sweeps are ml_collections config files (named ones in geolink_jax/bench/sweeps/, or any file with get_config and
get_sweep); `--config.SUITE.KEY=value` overrides a suite default. Rows are validated by `rows.validate_row`.
"""
