"""Compile-only plans for pods: the real train step lowered and compiled for N simulated devices, read, not run.

    geolink-jax plan --config geolink_vit_l --devices 256 --mesh data=8,fsdp=32 --chip h100,v5p

For a run config and a mesh, `plan` builds the family's train step exactly as the trainer does (the state's
shardings from the logical-axis rules, the batch split over the batch axes, donation), lowers and compiles it with
abstract inputs (ShapeDtypeStructs: nothing is allocated or run) and reads:
- per-device memory: parameters, optimizer state and frozen/model state (the shard sizes of their shardings), the
  batch slice, and XLA's compiled memory analysis (arguments, outputs, temporaries, aliased (donated) bytes);
- FLOPs per step: analytic (the family's count, the MFU convention) and XLA's cost analysis of the compiled
  per-device program;
- collectives per step, by kind, from the compiled HLO: each all-gather / reduce-scatter / all-reduce /
  all-to-all / collective-permute, its result bytes and group size, and the bytes a device sends over its links
  in a ring schedule (all-gather (g−1)/g·result, reduce-scatter (g−1)·result, all-reduce 2(g−1)/g·size,
  all-to-all (g−1)/g·size, permute: size);
- a roofline for each named chip (`CHIPS`): compute time (analytic FLOPs / peak), collective time (ring bytes /
  link bandwidth; on GPUs a group wider than a node runs hierarchically: NVLink inside the node, 1/8 of the
  payload per GPU over its network port between nodes), step time ≥ the larger of the
  two (perfect overlap) and the MFU bound that implies; and a memory time from XLA's bytes accessed / HBM
  bandwidth, reported as an upper bound only (XLA:CPU fuses far less than the GPU/TPU compilers, so its bytes
  accessed overstate HBM traffic several times);
  whether the per-device peak memory fits the chip's HBM (with 10% headroom), and if not the smallest FSDP degree
  that fits (`suggest_fsdp`, verified by compiling that mesh).

The program is compiled by XLA:CPU, so its temporaries and bytes accessed reflect CPU fusion and layouts, not the
accelerator's: treat them as estimates (the parameter, optimizer and batch bytes are exact). The collectives are
the SPMD partitioner's, the same on every backend, with one exception: XLA:CPU has no reduce-scatter creator, so
gradients reduced over FSDP appear as all-reduces, twice a reduce-scatter's bytes (an upper bound).
"""

import dataclasses
import math
import os
import re
import time

from geolink_jax.train.chips import CHIPS, GB, Chip, GiB  # noqa: F401  (the table plans use)

HEADROOM = 0.9  # a plan fits when its peak per-device bytes are ≤ 90% of HBM (runtime, fragmentation)


def ensure_devices(n):
    """Make this process see `n` simulated CPU devices. Must run before JAX starts a backend; afterwards it checks
    the count and raises a clear error."""
    import jax

    flag = f"--xla_force_host_platform_device_count={n}"
    try:
        started = jax._src.xla_bridge.backends_are_initialized()  # noqa: SLF001 (no public query)
    except AttributeError:
        started = False
    if not started:
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
        jax.config.update("jax_platforms", "cpu")
    if jax.device_count() != n:
        raise RuntimeError(f"planning for {n} devices needs {n} simulated CPU devices; JAX already started with "
                           f"{jax.device_count()} (run the plan in a fresh process)")


# ------------------------------------------------------------------------------------------ collectives (HLO)
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(?P<shape>\([^=]*?\)|[a-z0-9]+\[[0-9,]*\](?:\{[^}]*\})?)\s+"
                 r"(?P<op>all-gather|reduce-scatter|all-reduce|all-to-all|collective-permute)(?P<start>-start)?\(")
_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def _bytes(shape_text):
    return [_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
            for dt, dims in _ARRAY.findall(shape_text)]


def _group_size(line, devices):
    # mesh form: the axes, an optional device order, the axes the collective runs over
    m = re.search(r"replica_groups=mesh\[([^\]]*)\](?:,\s*device_ids=[^{]*)?\s*\{([^}]*)\}", line)
    if m:
        sizes = dict((k.strip("' "), int(v)) for k, v in (a.split("=") for a in m.group(1).split(",")))
        return math.prod(sizes[a.strip("' ")] for a in m.group(2).split(",") if a.strip())
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)  # iota form: [groups, group size]<=[…]
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", line)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"source_target_pairs=", line)
    return 2 if m else devices  # {} = every device


def _ring_fraction(kind, g):
    """Bytes a device sends in a ring schedule per byte of payload (the whole, unsharded buffer) over g devices."""
    if g <= 1:
        return 0.0
    return {"all-gather": (g - 1) / g, "reduce-scatter": (g - 1) / g, "all-reduce": 2 * (g - 1) / g,
            "all-to-all": (g - 1) / g, "collective-permute": 1.0}[kind]


def collectives(hlo_text, devices):
    """Compiled (SPMD-partitioned) HLO text → {kind: {count, result_bytes, traffic_bytes, max_group, payload}} per
    device per step. payload: {group size: bytes of the whole buffers} (an all-gather's result, a
    reduce-scatter's input, an all-reduce's buffer); traffic_bytes: what a device sends in a ring schedule. Async
    pairs are counted once (at -start)."""
    out = {k: dict(count=0, result_bytes=0, traffic_bytes=0.0, max_group=0, payload={}) for k in _KINDS}
    for line in hlo_text.splitlines():
        line = re.sub(r"/\*.*?\*/", "", line)  # tuple shapes carry /*index=5*/ comments
        m = _OP.search(line)
        if not m:
            continue
        kind, sizes = m.group("op"), _bytes(m.group("shape"))
        if m.group("start") and kind in ("all-gather", "collective-permute") and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2:]  # (operands…, results…): the results
        size, g = sum(sizes), _group_size(line, devices)
        payload = size * g if kind == "reduce-scatter" else size
        d = out[kind]
        d["count"] += 1
        d["result_bytes"] += size
        d["traffic_bytes"] += payload * _ring_fraction(kind, g)
        d["max_group"] = max(d["max_group"], g)
        d["payload"][g] = d["payload"].get(g, 0) + payload
    return out


def collective_seconds(colls, chip):
    """Time of a step's collectives on `chip`, one after another, at full link bandwidth. A GPU group wider than a
    node runs hierarchically (NCCL-style): the ring inside each node over NVLink, and between nodes 1/node_size of
    the payload per GPU over its network port."""
    total = 0.0
    for kind, c in colls.items():
        for g, payload in c["payload"].items():
            g = int(g)
            k = chip.node_size
            if kind != "collective-permute" and k and g > k and g % k == 0:
                m = g // k
                total += payload * _ring_fraction(kind, k) / chip.link_bw
                total += payload / k * _ring_fraction(kind, m) / chip.network_bw
            else:
                bw = chip.network_bw if (k and g > k) else chip.link_bw
                total += payload * _ring_fraction(kind, g) / bw
    return total


# ------------------------------------------------------------------------------------------ compile and read
def shard_bytes(tree):
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest device's share)."""
    import jax

    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def abstract_batch(setup, batch_size, manifest=None):
    """The family's abstract batch, sharded over the batch axes → (ShapeDtypeStructs, bytes per device)."""
    import jax

    from geolink_jax.train import sharding

    host = setup.family.abstract_batch(setup.model_cfg, batch_size, manifest, setup.config.data)
    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding.batch_sharding(setup.mesh, x.ndim))  # noqa
    per_device = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(host)) / \
        sharding.num_batch_shards(setup.mesh)
    return jax.tree.map(spec, host), per_device


def compiled_step(setup, batch_size):
    """A trainer Setup's step compiled for abstract inputs (the state's shardings, the batch over the batch axes;
    nothing allocated) → (compiled, abstract state, batch bytes per device, compile seconds)."""
    import jax

    state = setup.abstract_state()
    batch, batch_bytes = abstract_batch(setup, batch_size)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=setup.replicated)
    t0 = time.perf_counter()
    with jax.set_mesh(setup.mesh):
        compiled = setup.step_fn.lower(state, batch, key).compile()
    return compiled, state, batch_bytes, time.perf_counter() - t0


def run_config(name, mesh, batch=None, overrides=()):
    """A named config or file + `--config.` overrides + the mesh (and batch) → the resolved run config (no data:
    default graph budgets; on-device augmentation gets a 448 px canvas unless data.canvas_size says)."""
    from geolink_jax import config as config_lib
    from geolink_jax.train import trainer

    config = config_lib.load([f"--config={name}", *overrides])
    with config.unlocked():
        config.mesh = dict(mesh)
        if batch:
            config.batch_size = int(batch)
        if config.data.augment_on_device and not config.data.canvas_size:
            config.data.canvas_size = 448
    return trainer.resolve(config, None)


def compile_step(config):
    """Compile the train step of a resolved config on its mesh over this process's devices → measurements."""
    import jax

    from geolink_jax import config as config_lib
    from geolink_jax import family as family_lib
    from geolink_jax.config import ConfigError
    from geolink_jax.train import sharding, trainer

    mesh = sharding.make_mesh(config.mesh.to_dict())
    try:
        trainer.check_batch_size(config.batch_size, mesh, 1)
    except ValueError as e:
        raise ConfigError(f"{e}: plan with --batch") from None
    setup = trainer.Setup(config, mesh)
    compiled, state, batch_bytes, compile_s = compiled_step(setup, config.batch_size)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    devices = mesh.size
    analytic = family_lib.step_flops(setup.family, setup.model_cfg, config.batch_size)
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes - mem.alias_size_in_bytes
    return dict(
        config=config.get("name", ""), family=config.family, mesh=dict(mesh.shape), devices=devices,
        global_batch=config.batch_size, dtype=config_lib.model_dtype(config), compile_s=compile_s,
        params=sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"])),
        memory=dict(params=shard_bytes(state["params"]), optimizer=shard_bytes(state["opt_state"]),
                    other_state=shard_bytes({k: state[k] for k in ("frozen", "state", "step")}),
                    batch=batch_bytes, arguments=mem.argument_size_in_bytes, outputs=mem.output_size_in_bytes,
                    temporaries=mem.temp_size_in_bytes, aliased=mem.alias_size_in_bytes, peak=peak),
        flops=dict(analytic_per_step=analytic, analytic_per_device=analytic / devices,
                   xla_per_device=float(cost.get("flops", 0.0)),
                   xla_bytes_accessed_per_device=float(cost.get("bytes accessed", 0.0))),
        collectives=collectives(compiled.as_text(), devices))


def roofline(measured, chip):
    """A compiled step's measurements (`compile_step`) on a `Chip` → times, MFU and the memory fit."""
    peak = chip.peak(measured["dtype"])
    compute = measured["flops"]["analytic_per_device"] / peak
    memory = measured["flops"]["xla_bytes_accessed_per_device"] / chip.hbm_bw
    comm = collective_seconds(measured["collectives"], chip)
    step = max(compute, comm)
    fits = measured["memory"]["peak"] <= HEADROOM * chip.hbm_bytes
    return dict(chip=chip.name, compute_s=compute, memory_s_upper=memory, collective_s=comm, step_s=step,
                bound="compute" if compute >= comm else "collectives",
                mfu=compute / step if step else 0.0, hbm_bytes=chip.hbm_bytes, fits=fits,
                samples_per_s=measured["global_batch"] / step if step else 0.0)


def fsdp_candidates(devices):
    """Meshes (data, fsdp, 1) for each divisor fsdp of `devices`, smallest FSDP degree first."""
    return [dict(data=devices // f, fsdp=f, tensor=1) for f in range(1, devices + 1) if devices % f == 0]


def suggest_fsdp(name, devices, chip, batch=None, overrides=(), measured=None):
    """The smallest FSDP degree whose compiled plan fits `chip` → (mesh, measurements) or (None, None). The state
    (the part FSDP divides) is extrapolated from `measured` to skip meshes that cannot fit; each candidate that
    might is compiled to confirm."""
    for mesh in fsdp_candidates(devices):
        if measured is not None:
            m = measured["memory"]
            state = m["params"] + m["optimizer"] + m["other_state"]
            other = m["peak"] - state
            if other + state * measured["mesh"].get("fsdp", 1) / mesh["fsdp"] > HEADROOM * chip.hbm_bytes:
                continue
        cand = compile_step(run_config(name, mesh, batch, overrides))
        if cand["memory"]["peak"] <= HEADROOM * chip.hbm_bytes:
            return mesh, cand
    return None, None


def _child_peak(name, devices, batch, overrides):
    """Peak bytes per device of `name` on a pure-FSDP mesh of `devices`, compiled in a fresh process (a process
    cannot change its simulated device count)."""
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/plan.json"
        cmd = [sys.executable, "-m", "geolink_jax.cli", "plan", "--config", name, "--devices", str(devices),
               "--mesh", f"data=1,fsdp={devices},tensor=1", "--no-suggest", "--json", out, *overrides]
        if batch:
            cmd += ["--batch", str(batch)]
        # the child sets its own device count; the user's other XLA flags go with it
        flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).strip()
        proc = subprocess.run(cmd, env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"planning {name} on {devices} devices failed: {proc.stderr.strip()[-500:]}")
        with open(out) as f:
            return json.load(f)["measured"]["memory"]["peak"]


def suggest_devices(name, measured, chip, batch=None, overrides=(), max_devices=4096, max_compiles=3):
    """When no mesh of the planned devices fits: the smallest power-of-two multiple N of them whose pure-FSDP plan
    fits `chip` → (N, peak bytes) or (None, None). Per-device state and batch both shrink as 1/N, so the peak is
    first estimated as measured·n/N; a candidate that might fit is compiled (in a child process) to confirm."""
    n0, limit = measured["devices"], HEADROOM * chip.hbm_bytes
    n, compiles = 2 * n0, 0
    while n <= max_devices and compiles < max_compiles and n <= measured["global_batch"]:
        if measured["global_batch"] % n == 0 and measured["memory"]["peak"] * n0 / n <= limit:
            peak = _child_peak(name, n, batch or measured["global_batch"], overrides)
            compiles += 1
            if peak <= limit:
                return n, peak
        n *= 2
    return None, None


def plan(name, devices, mesh, chips=("h100",), batch=None, overrides=(), suggest=True, hbm_gib=None):
    """Compile `name` for `devices` simulated devices on `mesh` ({'data': n, 'fsdp': n, 'tensor': n}; -1 fills) and
    read it on each chip (hbm_gib: instead of the chips' HBM) → dict(measured, rooflines, suggestions).

    A chip the plan does not fit gets a suggestion: the smallest FSDP degree on these devices that fits, else the
    smallest pure-FSDP device count that does, each confirmed by compiling it."""
    ensure_devices(devices)
    measured = compile_step(run_config(name, mesh, batch, overrides))
    measured["config"] = name
    out = dict(measured=measured, rooflines={}, suggestions={})
    for c in chips:
        chip = CHIPS[c] if hbm_gib is None else dataclasses.replace(CHIPS[c], hbm_bytes=hbm_gib * GiB)
        out["rooflines"][c] = roofline(measured, chip)
        if suggest and not out["rooflines"][c]["fits"]:
            mesh_ok, cand = suggest_fsdp(name, devices, chip, batch, overrides, measured)
            if mesh_ok:
                out["suggestions"][c] = dict(devices=devices, mesh=mesh_ok, peak_bytes=cand["memory"]["peak"])
                continue
            n, peak = suggest_devices(name, measured, chip, batch, overrides)
            out["suggestions"][c] = dict(devices=n, mesh=dict(data=1, fsdp=n, tensor=1) if n else None,
                                         peak_bytes=peak)
    return out


def _gib(x):
    return f"{x / GiB:.2f} GiB" if x >= GiB / 10 else f"{x / 2 ** 20:.2f} MiB"


def format_plan(p):
    """A plan → the lines `geolink-jax plan` prints."""
    m = p["measured"]
    mem, fl = m["memory"], m["flops"]
    lines = [f"{m['config']} ({m['family']}, {m['params'] / 1e6:.1f}M params, {m['dtype']}) on {m['devices']} devices,"
             f" mesh {m['mesh']}, global batch {m['global_batch']} (compiled in {m['compile_s']:.0f} s)",
             f"  memory per device: params {_gib(mem['params'])}, optimizer {_gib(mem['optimizer'])}, "
             f"other state {_gib(mem['other_state'])}, batch {_gib(mem['batch'])}, temporaries "
             f"{_gib(mem['temporaries'])} → peak {_gib(mem['peak'])}",
             f"  FLOPs per step: analytic {fl['analytic_per_step']:.3e} ({fl['analytic_per_device']:.3e} per device),"
             f" XLA {fl['xla_per_device']:.3e} per device; XLA bytes accessed "
             f"{_gib(fl['xla_bytes_accessed_per_device'])} per device",
             "  collectives per device per step (ring bytes sent):"]
    for kind, c in m["collectives"].items():
        if c["count"]:
            lines.append(f"    {kind:18s} {c['count']:4d} ops, {_gib(c['traffic_bytes'])} (results "
                         f"{_gib(c['result_bytes'])}, groups ≤ {c['max_group']})")
    for name, r in p["rooflines"].items():
        fit = "fits" if r["fits"] else f"DOES NOT FIT in {_gib(r['hbm_bytes'])}"
        lines.append(f"  {name}: step ≥ {r['step_s'] * 1e3:.1f} ms ({r['bound']}-bound: compute "
                     f"{r['compute_s'] * 1e3:.1f}, collectives {r['collective_s'] * 1e3:.1f} ms; HBM traffic ≤ "
                     f"{r['memory_s_upper'] * 1e3:.1f} ms) → MFU ≤ {100 * r['mfu']:.0f}%, "
                     f"≤ {r['samples_per_s']:.0f} samples/s; memory {fit}")
        if name in p["suggestions"]:
            s = p["suggestions"][name]
            lines.append(f"    smallest FSDP mesh that fits: {s['mesh']} on {s['devices']} devices (peak "
                         f"{_gib(s['peak_bytes'])}, compiled)" if s["mesh"] else
                         "    no FSDP mesh up to 4096 devices fits: add tensor parallelism or shrink the batch")
    return lines
