"""geolink_jax benchmarks: suites, ml_collections sweeps, JSON result rows and reports (`geolink-jax bench`).

Suites (one module each; `run(cfg) -> row` measures one configuration):
  step        train-step throughput, analytic FLOPs vs XLA cost analysis, MFU      model_step_bench.py
  mask        sparse vs dense encoding: the step at image mask ratios 0 … 0.9      model_step_bench.py
  pipeline    input pipeline rate vs what the step consumes (headroom)             input_pipeline_bench.py
  preprocess  tile-graph building, vectorised vs the pairwise-`relate` baseline    preprocess_bench.py
  memory      per-device memory for DP / FSDP / TP meshes (compiled analysis)      memory_bench.py
  compile     compile time and recompilations over varied graphs                  compile_bench.py
  reference   the official PyTorch GeoLink on the same config, data and batch      reference_bench.py

Sweeps are ml_collections config files in configs/bench/; rows are validated by `rows.validate_row`.
"""
