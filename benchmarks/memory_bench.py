"""Per-device memory of the train step under data parallelism, FSDP and FSDP + tensor parallelism (issue 4).

    python benchmarks/memory_bench.py [--config geolink_vit_b] [--batch 8] [--meshes "8,1,1;1,8,1;2,2,2"]

Runs on 8 simulated CPU devices (sets XLA_FLAGS itself when jax has not started). For each mesh it lowers and
compiles the real jitted train step (GeoLink loss, AdamW, donation) for the named config, with abstract inputs, and
reads XLA's compiled memory analysis: per-device argument bytes (parameters + optimizer state + this device's batch
slice), output, temporaries. Parameters + optimizer bytes per device = argument bytes − the batch slice; they are
cross-checked against the sum of the shard sizes of the state's shardings. Target: FSDP over 8 devices holds ≈ 1/8
of the data-parallel (replicated) bytes. Graphs are the real UFZ graphs (512-d CLIP tag features) at the default
budgets; images 224 px.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.model_step_bench import host_batch  # noqa: E402
from geolink_jax.train import sharding, trainer  # noqa: E402


def abstract_batch(batch_size, image_size, mesh):
    """The step suite's batch (bundled UFZ graphs at the default budget) as sharded ShapeDtypeStructs; also its
    bytes per device and the tag-feature width."""
    host, feature_dim = host_batch(batch_size, image_size)
    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(mesh, x.ndim))  # noqa
    batch = jax.tree.map(spec, host)
    per_device = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(host)) / sharding.num_batch_shards(mesh)
    return batch, per_device, feature_dim


def shard_bytes(abstract_state):
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest device's share)."""
    total = 0
    for x in jax.tree.leaves(abstract_state):
        shard = x.sharding.shard_shape(x.shape)
        total += math.prod(shard) * x.dtype.itemsize
    return total


def measure(config_name, mesh_shape, batch_size):
    config = importlib.import_module(f"configs.{config_name}").get_config()
    config.batch_size = batch_size
    data, fsdp, tensor = mesh_shape
    config.mesh = dict(data=data, fsdp=fsdp, tensor=tensor)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    image_size = config.model.vit.image_size
    batch, batch_bytes, feature_dim = abstract_batch(batch_size, image_size, mesh)
    setup = trainer.Setup(config, mesh, feature_dim)
    # eval_shape of the sharded initialisers: ShapeDtypeStructs that carry the state's shardings
    params = jax.eval_shape(jax.jit(setup._init_params, out_shardings=setup.param_shardings))
    state = dict(params=params, opt_state=jax.eval_shape(jax.jit(setup.tx.init, out_shardings=setup.opt_shardings),
                                                         params),
                 step=jax.ShapeDtypeStruct((), jnp.int32, sharding=setup.replicated))
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=setup.replicated)
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = setup.step_fn.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    n_params = sum(x.size for x in jax.tree.leaves(params))
    return dict(
        bench="memory", config=config_name, mesh=dict(mesh.shape), batch=batch_size, dtype=config.model.dtype,
        params=n_params, compile_s=compile_s,
        argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes, batch_bytes=batch_bytes,
        state_bytes_compiled=mem.argument_size_in_bytes - batch_bytes, state_bytes_shardings=shard_bytes(state),
        device=jax.devices()[0].device_kind, device_count=jax.device_count(), jax=jax.__version__)


def run(cfg):
    """Suite `memory`: one row for the meshes in cfg.meshes (needs 8 devices; the runner provides them on CPU)."""
    from benchmarks import rows

    row = rows.new_row("memory", cfg.get("name") or f"{cfg.config} b{cfg.batch} memory per mesh", rows.flatten(cfg))
    m = row["metrics"]
    labels = []
    for shape in cfg.meshes:
        r = measure(cfg.config, tuple(shape), cfg.batch)
        label = "x".join(str(s) for s in shape)
        labels.append(label)
        for k in ("state_bytes_compiled", "state_bytes_shardings", "temp_bytes", "argument_bytes", "output_bytes",
                  "compile_s"):
            m[f"{label}.{k}"] = r[k]
        m["params"] = r["params"]
    dp = labels[0]  # the first mesh is the data-parallel reference
    for label in labels[1:]:
        shards = math.prod(int(x) for x in label.split("x")[1:])
        m[f"{label}.ideal_ratio"] = 1 / shards
        # judged against target_factor × the ideal 1/shards (0: reported only; small models are mostly replicated
        # biases and norms, so only real model sizes are judged)
        factor = cfg.get("target_factor", 1.25)
        rows.ratio(row, f"{label}_state_over_{dp}", f"metrics.{label}.state_bytes_compiled",
                   f"metrics.{dp}.state_bytes_compiled", target=factor / shards if factor else None, op="<=")
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="geolink_vit_b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--meshes", default="8,1,1;1,8,1;2,2,2")
    args = parser.parse_args(argv)
    assert jax.device_count() == 8, f"needs 8 devices, have {jax.device_count()} (XLA_FLAGS set after jax started?)"

    rows = []
    for shape in args.meshes.split(";"):
        row = measure(args.config, tuple(int(x) for x in shape.split(",")), args.batch)
        rows.append(row)
        mb = lambda b: f"{b / 2**20:8.1f} MiB"  # noqa: E731
        print(f"mesh {row['mesh']}: params+optimizer per device {mb(row['state_bytes_compiled'])} (compiled) / "
              f"{mb(row['state_bytes_shardings'])} (shardings); temporaries {mb(row['temp_bytes'])}; "
              f"compile {row['compile_s']:.0f} s", flush=True)
    dp = next(r for r in rows if r["mesh"]["fsdp"] == 1 and r["mesh"]["tensor"] == 1)
    for r in rows:
        if r is dp:
            continue
        ratio = r["state_bytes_compiled"] / dp["state_bytes_compiled"]
        r["state_ratio_vs_dp"] = ratio
        shards = r["mesh"]["fsdp"] * r["mesh"]["tensor"]
        print(f"  {r['mesh']} / data-parallel: {ratio:.4f}x (ideal 1/{shards} = {1 / shards:.4f}x)")
    for r in rows:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
