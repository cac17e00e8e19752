"""Compile time and recompilations of the train step as the OSM graphs vary (suite `compile`).

    python -m benchmarks.compile_bench [--config demo] [--batches 8]

Feeds `batches` different batches through the jitted train step: each sample is a random node subset (30-100 %
of each type) of a real UFZ graph, so node and edge counts differ in every batch. XLA backend compilations are
counted with a `jax.monitoring` listener on JAX's backend-compile event.
- padded (the library): every batch padded to the fixed budget → one compilation however the graphs vary;
- naive (for contrast, `naive: True`): each batch padded only to its own largest graph (as the reference's
  dynamic shapes do), so every new shape compiles again. Reported, not a target.
Also reports the first step's compile and trace+lower times, and the steady step time.
"""

import argparse
import contextlib
import dataclasses
import json
import time

import jax
import numpy as np

from benchmarks import rows
from benchmarks.model_step_bench import training_config
from geolink_jax import samples
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


def varied_graphs(graphs, count, rng):
    """`count` random node subsets (30-100 % of each type) of the given graphs."""
    out = []
    for i in range(count):
        g = graphs[i % len(graphs)]
        keep = {}
        for t in NODE_TYPES:
            n = g.num_nodes(t)
            k = int(rng.integers(int(0.3 * n), n + 1)) if n else 0
            keep[t] = np.sort(rng.choice(n, k, replace=False)) if k else np.zeros(0, np.int64)
        out.append(g.subgraph(keep))
    return out


def own_budget(graphs):
    """The smallest budget that holds these graphs (what a dynamic-shape pipeline would produce)."""
    return GraphBudget(nodes={t: max(1, max(g.num_nodes(t) for g in graphs)) for t in NODE_TYPES},
                       edges={r: max(1, max(g.num_edges(r) for g in graphs)) for r in RELATION_NAMES})


def run(cfg):
    row = rows.new_row("compile", cfg.get("name") or f"{cfg.config} b{cfg.batch} {cfg.batches} varied batches",
                       rows.flatten(cfg))
    rng = np.random.default_rng(0)
    base = samples.ufz_graphs()
    config = training_config(cfg)
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
    feature_dim = base[0].features["polygon"].shape[1]
    image_size = config.model.vit.image_size
    batches = [varied_graphs(base, cfg.batch, rng) for _ in range(cfg.batches)]
    image = rng.standard_normal((cfg.batch, image_size, image_size, 3)).astype(np.float32)
    m = row["metrics"]
    modes = [("padded", lambda gs: GraphBudget.default())]
    if cfg.get("naive"):
        modes.append(("naive", own_budget))
    for mode, budget_of in modes:
        setup = trainer.Setup(config, mesh, feature_dim)  # a fresh jit cache per mode
        state = setup.init_state()
        times = []
        shapes = set()
        keys = [jax.random.key(i) for i in range(len(batches))]  # made outside the count: key creation compiles
        with jax.set_mesh(mesh), count_compiles() as compiles:
            for i, graphs in enumerate(batches):
                graph, _ = pad_graphs(graphs, budget_of(graphs))
                host = dict(image=image, graph=dataclasses.asdict(graph))
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
    rows.ratio(row, "padded_compiles_per_batch", "metrics.padded_backend_compiles", "metrics.batches",
               target=1 / cfg.batches + 1e-9, op="<=")
    return row


def main(argv=None):
    from configs.bench import common

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--naive", action="store_true")
    args = p.parse_args(argv)
    cfg = common.base_config().compile
    cfg.update(config=args.config, batch=args.batch, batches=args.batches, naive=args.naive)
    print(json.dumps(rows.validate_row(run(cfg)), indent=1))


if __name__ == "__main__":
    main()
