"""The train step of any family: throughput, FLOPs and MFU (suite `step`), and sparse vs dense encoding (suite `mask`).

    geolink-jax bench --only step --config.step.config=mae_demo --config.step.repeats=3

Both time the real jitted train step (`trainer.Setup.step_fn`: the family's loss, value_and_grad, global-norm
clipping, AdamW, non-finite guard, donated state) on the family's example batch (GeoLink: the bundled UFZ graphs —
real OSM, 512-d CLIP tag features, padded to the default budget — and random images at the config's size), after
compilation.

step: analytic FLOPs (the family's flops_per_sample × batch + flops_shared) cross-checked with XLA's cost analysis of
the compiled step;
achieved FLOP/s per device; MFU against the device's peak (known GPUs/TPUs, or `peak_tflops` given); and, always,
the fraction of this device's measured matmul rate (`roof`: a large matmul at the same dtype), which is the
meaningful ceiling on a CPU.
mask: one step per image mask ratio, interleaved repeats in one process; ratios to the mask-0 (dense) step.
Target: mask 0.75 ≤ 0.35× mask 0.
remat: one step per rematerialisation policy (nn/partitioning.REMAT_POLICIES) set on every config field in `fields`
(GAIR: model.sv.remat and model.rs.remat), interleaved in one process: the step time of each over policy "none", and
the XLA temporaries of each compiled step on this device.
"""

import time

import jax
import jax.numpy as jnp

from geolink_jax import family as family_lib
from geolink_jax.bench import rows
from geolink_jax.train import chips, sharding, trainer


def training_config(cfg, mask_ratio=None, overrides=()):
    """A bench run config (config, batch, dtype, mask_ratio, attention_impl, mesh, overrides) → the resolved run
    config of its named config (any family), with the default data budgets (no manifest); `overrides` (flattened
    key, value) pairs go after the run's own."""
    from geolink_jax import config as config_lib

    config = config_lib.load_file(cfg.config)
    config.batch_size = cfg.batch
    # the model block, or its towers (DOFA-CLIP's image/text), whichever hold the field
    blocks = [config.model] + [v for v in config.model.values() if hasattr(v, "keys")]
    for block in blocks:
        if "dtype" in block:
            block.dtype = cfg.get("dtype") or block.dtype
        if "attention_impl" in block:
            block.attention_impl = cfg.get("attention_impl") or None
    mask_ratio = cfg.get("mask_ratio") if mask_ratio is None else mask_ratio
    if mask_ratio is not None and "img_mask_ratio" in config.model:  # families with a masked image encoder
        config.model.img_mask_ratio = mask_ratio
    config.update_from_flattened_dict(dict(cfg.get("overrides", ())) | dict(overrides))  # [("model.sv.remat", "full")]
    config.mesh = dict(cfg.mesh)
    config.total_steps = 1000
    config.epochs = 0.0
    return trainer.resolve(config, None)


def mesh_for(cfg):
    shape = dict(cfg.mesh)
    n = cfg.get("devices", 1)
    if n > jax.device_count():
        raise RuntimeError(f"run needs {n} devices, have {jax.device_count()}")
    return sharding.make_mesh(shape, devices=jax.devices()[:n])


class StepRunner:
    """A compiled train step for one config on one mesh, with its state and one batch (host: the numpy arrays it
    came from, for other implementations to run on the same data)."""

    def __init__(self, cfg, mask_ratio=None, mesh=None, overrides=(), state=None):
        self.mesh = mesh or mesh_for(cfg)
        self.config = training_config(cfg, mask_ratio, overrides)
        self.setup = trainer.Setup(self.config, self.mesh)
        self.host = self.setup.family.example_batch(self.setup.model_cfg, cfg.batch)
        self.state = self.setup.init_state() if state is None else state  # another variant's: same shapes
        with jax.set_mesh(self.mesh):
            self.batch = sharding.global_batch(self.host, self.mesh)
            key = jax.random.key(0)
            t0 = time.perf_counter()
            lowered = self.setup.step_fn.lower(self.state, self.batch, key)
            self.lower_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            self.compiled = lowered.compile()
            self.compile_s = time.perf_counter() - t0
        cost = self.compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        self.xla_flops = float(cost.get("flops", float("nan")))  # per device (the SPMD program)
        memory = self.compiled.memory_analysis()
        self.temp_bytes = getattr(memory, "temp_size_in_bytes", float("nan"))
        self.model_flops = family_lib.step_flops(self.setup.family, self.setup.model_cfg, cfg.batch)
        self._calls = 0
        self.step()  # first run: allocations, autotuning

    def step(self):
        """One step, blocking; returns seconds."""
        with jax.set_mesh(self.mesh):
            t0 = time.perf_counter()
            self._calls += 1
            self.state, metrics = self.compiled(self.state, self.batch, jax.random.key(self._calls))
            jax.block_until_ready(metrics)
            return time.perf_counter() - t0


def matmul_roof(dtype, n=2048, repeats=5):
    """FLOP/s of a large square matmul at `dtype` on the default device (best of `repeats`)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = min(_timed(lambda: f(a, a).block_until_ready()) for _ in range(repeats))
    return 2 * n ** 3 / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_step(cfg):
    flat = rows.flatten(cfg)
    devices = f" on {cfg.devices} devices" if cfg.get("devices", 1) > 1 else ""
    row = rows.new_row("step", cfg.get("name") or f"{cfg.config} b{cfg.batch} {cfg.dtype}{devices}", flat)
    r = StepRunner(cfg)
    row["times_s"]["step"] = rows.stats([r.step() for _ in range(cfg.repeats)])
    n_dev = r.mesh.size
    m = row["metrics"]
    m.update(compile_s=r.compile_s, lower_s=r.lower_s, devices=n_dev, batch=cfg.batch,
             model_flops_per_step=r.model_flops, model_flops_per_device_step=r.model_flops / n_dev,
             xla_flops_per_device_step=r.xla_flops)
    m["samples_per_s"] = cfg.batch / row["times_s"]["step"]["median"]
    m["model_flops_per_s_per_device"] = m["model_flops_per_device_step"] / row["times_s"]["step"]["median"]
    m["matmul_roof_flops_per_s"] = matmul_roof(cfg.dtype)
    rows.ratio(row, "analytic_over_xla_flops", "metrics.model_flops_per_device_step",
               "metrics.xla_flops_per_device_step", target=0.8, op=">=")
    rows.ratio(row, "roof_fraction", "metrics.model_flops_per_s_per_device", "metrics.matmul_roof_flops_per_s")
    peak = cfg.get("peak_tflops") and cfg.peak_tflops * 1e12 or chips.peak_flops(row["env"]["device_kind"], cfg.dtype)
    if peak:
        m["peak_flops_per_s_per_device"] = peak
        rows.ratio(row, "mfu", "metrics.model_flops_per_s_per_device", "metrics.peak_flops_per_s_per_device",
                   target=cfg.get("mfu_target") or None, op=">=")
    return row


def step_variants(cfg, suite, variants):
    """One row timing the step of each variant ({label: StepRunner keyword arguments}) on one mesh, interleaved, one
    train state passed from step to step;
    each variant's compile time, analytic FLOPs and XLA temporaries in its metrics. The first is the reference of
    `variant_ratios`."""
    row = rows.new_row(suite, cfg.get("name") or f"{cfg.config} b{cfg.batch} {cfg.dtype} {suite} sweep",
                       rows.flatten(cfg))
    mesh = mesh_for(cfg)
    runners, state = {}, None
    for label, kwargs in variants.items():
        # one train state for all (same parameters; each step donates it to the next): memory for one, not N
        runners[label] = r = StepRunner(cfg, mesh=mesh, state=state, **kwargs)
        state, r.state = r.state, None
        row["metrics"].update({f"compile_s_{label}": r.compile_s, f"model_flops_{label}": r.model_flops,
                               f"temp_bytes_{label}": r.temp_bytes})
    times = {label: [] for label in runners}
    for _ in range(cfg.repeats):
        for label, r in runners.items():
            r.state = state
            times[label].append(r.step())
            state, r.state = r.state, None
    for label, t in times.items():
        row["times_s"][label] = rows.stats(t)
    return row


def variant_ratios(row, labels, targets=None):
    """Each variant's median step time over the first's (`targets`: {label: the ≤ target})."""
    for label in labels[1:]:
        rows.ratio(row, f"{label}_over_{labels[0].split('_', 1)[1]}", f"times_s.{label}.median",
                   f"times_s.{labels[0]}.median", target=(targets or {}).get(label), op="<=")


def run_mask(cfg):
    labels = [f"mask_{ratio}" for ratio in cfg.mask_ratios]
    row = step_variants(cfg, "mask", {label: dict(mask_ratio=r) for label, r in zip(labels, cfg.mask_ratios)})
    variant_ratios(row, labels, {"mask_0.75": cfg.get("target_075")})
    return row


def run_remat(cfg):
    labels = [f"remat_{policy}" for policy in cfg.policies]
    row = step_variants(cfg, "remat", {label: dict(overrides=[(k, policy) for k in cfg.fields])
                                       for label, policy in zip(labels, cfg.policies)})
    variant_ratios(row, labels)
    return row
