"""Forward+backward time of the full GeoLink loss, and the sparse-encoding saving (issue 3).

    python benchmarks/model_step_bench.py [--vit B] [--batch 4] [--dtype float32] [--repeats 5]

Times one jitted value_and_grad of GeoLink.loss (all three losses) on real UFZ graphs (padded to the default
budget) and random 224 px images, at image mask ratio 0.75 (the encoder sees 49 of 196 tokens) and at 0 (all
196), in the same process, interleaved, after compilation. Prints min/median per ratio and the ratio of the
medians. Target: mask-0.75 step <= 0.35x the mask-0 step.
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax import samples
from geolink_jax.data.graph_batch import GraphBudget, pad_graphs
from geolink_jax.models import VIT_PRESETS, GeoLink, GeoLinkConfig
from geolink_jax.osm import osm_graph


def make_step(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, images, graph, key):
        return nnx.merge(graphdef, p, rest).loss(images, graph, key)

    grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return lambda images, graph, key: grad_fn(params, images, graph, key)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit", default="B", choices=sorted(VIT_PRESETS))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    names = samples.ufz_tile_names()
    graphs = [osm_graph.graph_from_npz(samples.UFZ_DIR / "graph" / f"{n}.npz") for n in names]
    graphs = (graphs * args.batch)[: args.batch]
    graph, _ = pad_graphs(graphs, GraphBudget.default())
    graph = jax.tree.map(jnp.asarray, graph)
    images = jax.random.normal(jax.random.key(0), (args.batch, 224, 224, 3), jnp.float32)

    steps = {}
    for ratio in (0.75, 0.0):
        cfg = GeoLinkConfig(vit=VIT_PRESETS[args.vit], dtype=args.dtype, img_mask_ratio=ratio)
        model = GeoLink(cfg, rngs=nnx.Rngs(0))
        step = make_step(model)
        t0 = time.perf_counter()
        jax.block_until_ready(step(images, graph, jax.random.key(1)))
        print(f"mask {ratio}: compiled + first step in {time.perf_counter() - t0:.1f} s", flush=True)
        steps[ratio] = step

    times = {r: [] for r in steps}
    for i in range(args.repeats):  # interleave so drift on a noisy machine hits both alike
        for r, step in steps.items():
            t0 = time.perf_counter()
            jax.block_until_ready(step(images, graph, jax.random.key(2 + i)))
            times[r].append(time.perf_counter() - t0)

    med = {r: statistics.median(t) for r, t in times.items()}
    row = dict(
        bench="geolink_step", vit=args.vit, batch=args.batch, dtype=args.dtype, repeats=args.repeats,
        device=jax.devices()[0].device_kind, device_count=jax.device_count(), jax=jax.__version__,
        machine=platform.machine(), cpu_count=__import__("os").cpu_count(),
        step_s={str(r): dict(min=min(t), median=med[r], max=max(t)) for r, t in times.items()},
        ratio_mask075_over_mask0=med[0.75] / med[0.0],
    )
    print(f"ViT-{args.vit}/16 GeoLink loss fwd+bwd, batch {args.batch}, {args.dtype}, {row['device']}")
    for r, t in times.items():
        print(f"  mask {r:4}: min {min(t):.3f} s  median {med[r]:.3f} s  max {max(t):.3f} s")
    verdict = "met" if row["ratio_mask075_over_mask0"] <= 0.35 else "NOT met"
    print(f"  mask 0.75 / mask 0 (medians): {row['ratio_mask075_over_mask0']:.3f}x  (target <= 0.35x: {verdict})")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
