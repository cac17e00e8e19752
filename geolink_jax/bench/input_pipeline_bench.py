"""Input pipeline rate vs what the train step consumes, and graph padding waste (issue 4).

    geolink-jax bench --only pipeline [--config.pipeline.config=geolink_vit_b] [--config.pipeline.batches=30]

For each named config, on the bundled sample tiles (preprocessed once with the e5 tag encoder, as the demo does):
- pipeline: samples/s of the grain pipeline alone (read ArrayRecord → decode → augment → pad → batch), after one
  warm-up batch, in this process (worker_count as given: 0 = no multiprocess prefetch);
- step: samples/s the jitted train step consumes (params + AdamW update, state donated) on one device, timed
  over --repeats after compilation, with one batch already on the device;
- headroom = pipeline / step (target >= 3x): how much faster the host feeds than the step eats;
- the real loop (pipeline threads + step together): samples/s and the share of time spent waiting for input;
- padding waste per node type and relation: 1 − real / padded slots over the batches read, at the config's
  budget statistic (the manifest's max or percentile), and the nodes dropped to fit it.

On this CPU-only machine the step and the pipeline share the same two cores; on an accelerator host the step runs
on the device, so the step rate here is far below a GPU's and the demo row is the demanding one. The step runs in
float32 by default (--dtype): XLA's CPU bf16 is slower than fp32, which would flatter the headroom.
"""

import os
import pathlib
import platform
import statistics
import tempfile
import time

import jax

from geolink_jax import config as config_lib
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES
from geolink_jax.tiles import job as preprocess
from geolink_jax.tiles import pipeline
from geolink_jax.train import sharding, trainer


def bundled_shards(workdir):
    """The demo's own data step: the bundled tiles preprocessed (e5) into workdir/data; returns that directory."""
    return str(preprocess.bundled_tiles(pathlib.Path(workdir) / "data"))


def measure(name, data_dir, *, batch=None, batches=30, repeats=20, dtype="float32", workers=0, threads=2):
    """A GeoLink named config's pipeline (the graphs are what is measured) against its step."""
    config = config_lib.load_file(name)
    config.data.path = data_dir
    if batch:
        config.batch_size = batch
    config.model.dtype = dtype
    config.data.update(worker_count=workers, read_threads=threads)
    paths, manifest = trainer.prepare_data(config, None)
    config = trainer.resolve(config, manifest)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    setup = trainer.Setup(config, mesh)
    budget = pipeline.pipeline_config(config, manifest, setup.model_cfg.vit.image_size).budget
    it = iter(setup.family.dataset(paths, manifest, config, setup.model_cfg))

    first = next(it)  # warm-up (opens the shards, starts workers)
    read, batch_times = [], []
    for _ in range(batches):
        t0 = time.perf_counter()
        read.append(next(it))
        batch_times.append(time.perf_counter() - t0)
    pipeline_sps = batches * config.batch_size / sum(batch_times)

    real = {k: 0 for k in (*NODE_TYPES, *RELATION_NAMES)}
    dropped = 0
    for b in read:
        for t in NODE_TYPES:
            real[t] += int(b["graph"]["n_node"][t].sum())
        for r in RELATION_NAMES:
            real[r] += int(b["graph"]["n_edge"][r].sum())
        dropped += int(b["stats"]["dropped_nodes"].sum())
    n = batches * config.batch_size
    waste = {t: 1 - real[t] / (n * budget.nodes[t]) for t in NODE_TYPES}
    waste.update({r: 1 - real[r] / (n * budget.edges[r]) for r in RELATION_NAMES})

    first.pop("stats")
    state = setup.init_state()
    with jax.set_mesh(mesh):
        batch_dev = sharding.global_batch(first, mesh)
        key = jax.random.key(0)
        t0 = time.perf_counter()
        state, metrics = setup.step_fn(state, batch_dev, key)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            state, metrics = setup.step_fn(state, batch_dev, key)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        # The real loop: pipeline threads and the (asynchronously dispatched) step together; the share of the wall
        # time spent waiting in next() is what a user sees as "input-bound".
        waited, t_loop = 0.0, time.perf_counter()
        for _ in range(batches):
            t0 = time.perf_counter()
            host = next(it)
            waited += time.perf_counter() - t0
            host.pop("stats")
            state, metrics = setup.step_fn(state, sharding.global_batch(host, mesh), key)
        jax.block_until_ready(metrics)
        loop_s = time.perf_counter() - t_loop
    step_sps = config.batch_size / statistics.median(times)
    return dict(
        bench="input_pipeline", config=name, batch=config.batch_size, image_size=setup.model_cfg.vit.image_size,
        vit_width=setup.model_cfg.vit.width, vit_depth=setup.model_cfg.vit.depth, dtype=dtype, workers=workers,
        threads=threads,
        pipeline_samples_per_s=pipeline_sps, step_samples_per_s=step_sps, headroom=pipeline_sps / step_sps,
        step_s=dict(min=min(times), median=statistics.median(times), max=max(times)), compile_s=compile_s,
        step_times=times, batch_times=batch_times,
        budget_stat=config.data.budget_stat, node_budget=budget.nodes, padding_waste=waste,
        dropped_nodes_per_sample=dropped / n, loop_samples_per_s=batches * config.batch_size / loop_s,
        loop_input_wait_fraction=waited / loop_s, device=jax.devices()[0].device_kind, jax=jax.__version__,
        machine=platform.machine(), cpu_count=os.cpu_count())


def run(cfg):
    """Suite `pipeline`: one config's pipeline rate vs step consumption as a result row (see geolink_jax.bench.rows)."""
    from geolink_jax.bench import rows

    row = rows.new_row("pipeline", cfg.get("name") or f"{cfg.config} pipeline vs step", rows.flatten(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(cfg.config, bundled_shards(tmp), batch=cfg.get("batch") or None, batches=cfg.batches,
                    repeats=cfg.repeats, dtype=cfg.dtype, workers=cfg.workers, threads=cfg.threads)
    row["times_s"]["step"] = rows.stats(r.pop("step_times"))
    row["times_s"]["pipeline_batch"] = rows.stats(r.pop("batch_times"))
    m = row["metrics"]
    m.update(batch=r["batch"], pipeline_samples_per_s=r["pipeline_samples_per_s"], compile_s=r["compile_s"],
             loop_samples_per_s=r["loop_samples_per_s"], loop_input_wait_fraction=r["loop_input_wait_fraction"],
             dropped_nodes_per_sample=r["dropped_nodes_per_sample"],
             **{f"padding_waste.{k}": v for k, v in r["padding_waste"].items()})
    m["step_samples_per_s"] = r["batch"] / row["times_s"]["step"]["median"]
    rows.ratio(row, "headroom", "metrics.pipeline_samples_per_s", "metrics.step_samples_per_s",
               target=cfg.get("target") or None, op=">=")
    return row
