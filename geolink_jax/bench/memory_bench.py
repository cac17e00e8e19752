"""Per-device memory of the train step under data parallelism, FSDP and FSDP + tensor parallelism (issue 4).

    geolink-jax bench --only memory [--config.memory.config=mae_vit_b] [--config.memory.batch=8]

Runs on 8 simulated CPU devices (sets XLA_FLAGS itself when jax has not started). For each mesh it lowers and
compiles the real jitted train step (the family's loss, AdamW, donation) for the named config, with abstract inputs
(the family's abstract batch), and
reads XLA's compiled memory analysis: per-device argument bytes (parameters + optimizer state + this device's batch
slice), output, temporaries. Parameters + optimizer bytes per device = argument bytes − the batch slice; they are
cross-checked against the sum of the shard sizes of the state's shardings. Target: FSDP over 8 devices holds ≈ 1/8
of the data-parallel (replicated) bytes. GeoLink graphs are at the default budgets.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import math  # noqa: E402

import jax  # noqa: E402

from geolink_jax import config as config_lib  # noqa: E402
from geolink_jax.bench.model_step_bench import training_config  # noqa: E402
from geolink_jax.train import sharding, trainer  # noqa: E402
from geolink_jax.train.plan import compiled_step, shard_bytes  # noqa: E402


def measure(config_name, mesh_shape, batch_size, dtype="", overrides=()):
    data, fsdp, tensor = mesh_shape
    bench = dict(config=config_name, batch=batch_size, dtype=dtype,
                 mesh=dict(data=data, fsdp=fsdp, tensor=tensor), overrides=[list(kv) for kv in overrides])
    import ml_collections

    config = training_config(ml_collections.ConfigDict(bench))
    mesh = sharding.make_mesh(config.mesh.to_dict())
    setup = trainer.Setup(config, mesh)
    compiled, state, batch_bytes, compile_s = compiled_step(setup, batch_size)  # abstract: nothing is allocated
    params = state["params"]
    mem = compiled.memory_analysis()
    n_params = sum(x.size for x in jax.tree.leaves(params))
    return dict(
        bench="memory", config=config_name, mesh=dict(mesh.shape), batch=batch_size,
        dtype=config_lib.model_dtype(config),
        params=n_params, compile_s=compile_s,
        argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
        temp_bytes=mem.temp_size_in_bytes, alias_bytes=mem.alias_size_in_bytes, batch_bytes=batch_bytes,
        state_bytes_compiled=mem.argument_size_in_bytes - batch_bytes, state_bytes_shardings=shard_bytes(state),
        device=jax.devices()[0].device_kind, device_count=jax.device_count(), jax=jax.__version__)


def run(cfg):
    """Suite `memory`: one row for the meshes in cfg.meshes (needs 8 devices; the runner provides them on CPU)."""
    from geolink_jax.bench import rows

    overrides = tuple((k, v) for k, v in cfg.get("overrides", ()))
    row = rows.new_row("memory", cfg.get("name") or f"{cfg.config} b{cfg.batch} memory per mesh" + "".join(
        f", {k}={v}" for k, v in overrides), rows.flatten(cfg))
    m = row["metrics"]
    labels = []
    for shape in cfg.meshes:
        r = measure(cfg.config, tuple(shape), cfg.batch, overrides=overrides)
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
