"""Compile time and recompilations of the train step as the OSM graphs (GeoLink) or the band counts (DOFA-CLIP) vary
(suite `compile`).

    geolink-jax bench --only compile [--config.compile.config=mae_demo] [--config.compile.batches=8]

Feeds `batches` different example batches of the config's family through the jitted train step (GeoLink: each
sample is a random node subset, 30-100 % of each type, of a real UFZ graph, so node and edge counts differ in every
batch). XLA backend compilations are
counted with a `jax.monitoring` listener on JAX's backend-compile event.
- padded (the library): every batch padded to the fixed budget → one compilation however the graphs vary;
- naive (GeoLink, for contrast, `naive: True`): each batch padded only to its own largest graph (as the reference's
  dynamic shapes do), so every new shape compiles again. Reported, not a target.
Also reports the first step's compile and trace+lower times, and the steady step time.
"""

import contextlib
import dataclasses
import time

import jax

from geolink_jax.bench import rows
from geolink_jax.bench.model_step_bench import training_config
from geolink_jax.data.graph_batch import GraphBudget, pad_graphs
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES
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


def own_budget(graphs):
    """The smallest budget that holds these graphs (what a dynamic-shape pipeline would produce)."""
    return GraphBudget(nodes={t: max(1, max(g.num_nodes(t) for g in graphs)) for t in NODE_TYPES},
                       edges={r: max(1, max(g.num_edges(r) for g in graphs)) for r in RELATION_NAMES})


def run(cfg):
    row = rows.new_row("compile", cfg.get("name") or f"{cfg.config} b{cfg.batch} {cfg.batches} varied batches",
                       rows.flatten(cfg))
    config = training_config(cfg)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    m = row["metrics"]
    setup = trainer.Setup(config, mesh)
    # the family's example batches with different contents (GeoLink: node subsets of the real graphs, padded)
    batches = [setup.family.example_batch(setup.model_cfg, cfg.batch, seed=i + 1) for i in range(cfg.batches)]
    modes = [("padded", setup, batches)]
    if config.family == "dofa_clip":
        # DOFA-CLIP: batches of 2, 3, … bands (the real Sentinel-2 bands of the demo, first k): padded to the band
        # buckets vs each at its own band count
        from geolink_jax.dofa_clip.family import band_subset_batch

        counts = [2 + (i * 5) % 12 for i in range(cfg.batches)]
        batches = [band_subset_batch(setup.model_cfg, cfg.batch, k) for k in counts]
        modes = [("padded", setup, batches)]
        if cfg.get("naive"):
            modes.append(("naive", trainer.Setup(config, mesh),
                          [band_subset_batch(setup.model_cfg, cfg.batch, k, pad=False) for k in counts]))
        m["band_counts"] = counts
        m["band_buckets_hit"] = len({setup.model_cfg.bucket(k) for k in counts})
    if cfg.get("naive") and config.family == "geolink":
        from geolink_jax.geolink.family import example_graphs

        naive = []
        for i, host in enumerate(batches):
            graphs = example_graphs(cfg.batch, seed=i + 1)
            graph, _ = pad_graphs(graphs, own_budget(graphs))
            naive.append(dict(image=host["image"], graph=dataclasses.asdict(graph)))
        modes.append(("naive", trainer.Setup(config, mesh), naive))  # a fresh jit cache
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
    if "band_buckets_hit" in m:  # DOFA-CLIP: one compilation per band bucket the batches fall in
        rows.ratio(row, "padded_compiles_per_bucket", "metrics.padded_backend_compiles", "metrics.band_buckets_hit",
                   target=1.0, op="<=")
    else:
        rows.ratio(row, "padded_compiles_per_batch", "metrics.padded_backend_compiles", "metrics.batches",
                   target=1 / cfg.batches + 1e-9, op="<=")
    return row
