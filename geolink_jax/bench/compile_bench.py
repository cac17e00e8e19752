"""Compile time and recompilations of the train step as the inputs vary the way a family's data do (suite `compile`):
GeoLink's OSM graphs, DOFA-CLIP's band counts (each family's `varied_batches`).

    geolink-jax bench --only compile [--config.compile.config=mae_demo] [--config.compile.batches=8]

Feeds `batches` different host batches of the config's family through the jitted train step (GeoLink: each
sample is a random node subset, 30-100 % of each type, of a real UFZ graph, so node and edge counts differ in every
batch). XLA backend compilations are counted with a `jax.monitoring` listener on JAX's backend-compile event.
- padded (the library): every batch padded to the family's static shapes → one compilation per shape bucket
  (`expected_compiles`) however the inputs vary;
- naive (for contrast, `naive: True`, where the family gives them): each batch at its own shapes (as the
  reference's dynamic shapes do), so every new shape compiles again. Reported, not a target.
Also reports the first step's compile and trace+lower times, and the steady step time.
"""

import contextlib
import time

import jax

from geolink_jax import family as family_lib
from geolink_jax.bench import rows
from geolink_jax.bench.model_step_bench import training_config
from geolink_jax.train import sharding, trainer

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Yields a list that collects the duration (s) of every XLA backend compilation inside the block."""
    seen, active = [], [True]

    def listener(event, duration, **kwargs):
        if active[0] and event == BACKEND_COMPILE_EVENT:
            seen.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield seen
    finally:
        active[0] = False  # jax has no public unregister for one listener; a dead one costs nothing


def run(cfg):
    row = rows.new_row("compile", cfg.get("name") or f"{cfg.config} b{cfg.batch} {cfg.batches} varied batches",
                       rows.flatten(cfg))
    config = training_config(cfg)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    m = row["metrics"]
    setup = trainer.Setup(config, mesh)
    # the family's host batches with varied contents (GeoLink: node subsets of the real graphs; DOFA-CLIP: band counts)
    if setup.family.varied_batches:
        varied = setup.family.varied_batches(setup.model_cfg, cfg.batch, cfg.batches)
    else:
        varied = family_lib.VariedBatches(
            [setup.family.example_batch(setup.model_cfg, cfg.batch, seed=i + 1) for i in range(cfg.batches)])
    m.update(varied.metrics)
    m["expected_compiles"] = varied.expected_compiles
    modes = [("padded", setup, varied.padded)]
    if cfg.get("naive") and varied.naive:
        modes.append(("naive", trainer.Setup(config, mesh), varied.naive))  # a fresh jit cache
    for mode, setup, hosts in modes:
        state = setup.init_state()
        times = []
        shapes = set()
        keys = [jax.random.key(i) for i in range(len(hosts))]  # made outside the count: key creation compiles
        with jax.set_mesh(mesh), count_compiles() as compiles:
            for i, host in enumerate(hosts):
                shapes.add(tuple(x.shape for x in jax.tree.leaves(host)))
                batch = sharding.global_batch(host, mesh)
                t0 = time.perf_counter()
                state, metrics = setup.step_fn(state, batch, keys[i])
                jax.block_until_ready(metrics)
                times.append(time.perf_counter() - t0)
        m[f"{mode}_backend_compiles"] = len(compiles)
        m[f"{mode}_distinct_batch_shapes"] = len(shapes)
        m[f"{mode}_compile_s_total"] = float(sum(compiles))
        m[f"{mode}_first_step_s"] = times[0]
        if len(times) > 1:
            row["times_s"][f"{mode}_later_steps"] = rows.stats(times[1:])
    m["batches"] = cfg.batches
    if "padded_later_steps" in row["times_s"]:  # first call = trace + lower + compile + one step
        m["padded_trace_lower_s"] = (m["padded_first_step_s"] - m["padded_compile_s_total"]
                                     - row["times_s"]["padded_later_steps"]["median"])
    # one compilation per shape bucket the padded batches fall in (GeoLink: one; DOFA-CLIP: one per band bucket)
    rows.ratio(row, "padded_compiles_per_expected", "metrics.padded_backend_compiles", "metrics.expected_compiles",
               target=1.0, op="<=")
    return row
