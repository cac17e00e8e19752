"""One JSON row per benchmark run: environment, config and its hash, timing statistics, measured metrics, and
ratios that name the measured values they are computed from.

Row schema (version 1):
  schema      1
  suite       suite name; name: a label for the run
  status      "ok" | "skipped" | "error" (then `reason` says why; nothing measured)
  config      the run's flattened config (dotted keys); config_hash: sha256 of it, first 12 hex digits
  env         machine, processor, cpu_count, python, jax, jaxlib, xla (backend platform version), backend,
              device_kind, device_count, xla_flags, jax_optimization_level, time
  times_s     {label: {min, median, max, n, samples}} seconds, over repeats
  metrics     {name: value} measured or derived quantities (throughput, FLOPs, bytes …; numbers, a few labels)
  ratios      {name: {value, num, den, target?, op?, met?}}: value = resolve(num) / resolve(den), where num/den
              are dotted paths into the row ("times_s.mask_0.median", "metrics.pipeline_samples_per_s")
"""

import datetime
import hashlib
import json
import os
import platform
import statistics

SCHEMA = 1
REQUIRED = ("schema", "suite", "name", "status", "config", "config_hash", "env", "times_s", "metrics", "ratios")
ENV_KEYS = ("machine", "processor", "cpu_count", "python", "jax", "jaxlib", "xla", "backend", "device_kind",
            "device_count", "xla_flags", "jax_optimization_level", "time")


def _processor():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment():
    """What the numbers depend on: host, library versions, backend and devices, XLA settings."""
    import jax
    import jaxlib
    from jax.extend import backend

    be = backend.get_backend()
    try:  # the XLA build inside jaxlib (private, so guarded); platform_version adds CUDA/cuDNN on GPUs
        from jax._src.lib import jaxlib_extension_version as xla_build
    except ImportError:
        xla_build = "unknown"
    return dict(
        machine=platform.node(), processor=_processor(), cpu_count=os.cpu_count(), python=platform.python_version(),
        jax=jax.__version__, jaxlib=jaxlib.__version__, xla=f"xla_extension {xla_build}; {be.platform_version}",
        backend=be.platform,
        device_kind=jax.devices()[0].device_kind, device_count=jax.device_count(),
        xla_flags=os.environ.get("XLA_FLAGS", ""), jax_optimization_level=str(jax.config.jax_optimization_level),
        time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def flatten(cfg, prefix=""):
    """ConfigDict / nested dict → {dotted key: value} (lists and tuples kept as lists)."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_hash(flat):
    return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()[:12]


def stats(samples):
    """Seconds over repeats → {min, median, max, n, samples}."""
    samples = [float(s) for s in samples]
    return dict(min=min(samples), median=statistics.median(samples), max=max(samples), n=len(samples),
                samples=samples)


def resolve(row, path):
    """A dotted path into a row: "times_s.mask_0.75.median" (keys may contain dots; the longest match wins)."""
    node, rest = row, path
    while rest:
        if not isinstance(node, dict):
            raise KeyError(path)
        for key in sorted(node, key=len, reverse=True):
            if rest == key or rest.startswith(key + "."):
                node, rest = node[key], rest[len(key) + 1:]
                break
        else:
            raise KeyError(f"{path}: no key for {rest!r}")
    return node


def ratio(row, name, num, den, target=None, op="<="):
    """Adds ratios[name] = resolve(num) / resolve(den) to `row`, judged against `target` with `op`."""
    value = resolve(row, num) / resolve(row, den)
    entry = dict(value=value, num=num, den=den)
    if target is not None:
        entry.update(target=target, op=op, met=bool(value <= target if op == "<=" else value >= target))
    row["ratios"][name] = entry
    return value


def new_row(suite, name, flat_config, env=None):
    return dict(schema=SCHEMA, suite=suite, name=name, status="ok", config=flat_config,
                config_hash=config_hash(flat_config), env=env or environment(), times_s={}, metrics={}, ratios={})


def skipped_row(suite, name, flat_config, reason):
    row = new_row(suite, name, flat_config)
    row.update(status="skipped", reason=reason)
    return row


def validate_row(row):
    """Raises ValueError naming what is wrong; returns the row. Checks the schema, that timing statistics are those
    of their samples and that every ratio is the quotient of the values it names."""
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise ValueError(f"row {row.get('suite')}/{row.get('name')}: missing {missing}")
    if row["schema"] != SCHEMA:
        raise ValueError(f"row schema {row['schema']} != {SCHEMA}")
    missing_env = [k for k in ENV_KEYS if k not in row["env"]]
    if missing_env:
        raise ValueError(f"row {row['suite']}/{row['name']}: env lacks {missing_env}")
    if row["config_hash"] != config_hash(row["config"]):
        raise ValueError(f"row {row['suite']}/{row['name']}: config_hash does not match its config")
    if row["status"] in ("skipped", "error"):
        if not row.get("reason"):
            raise ValueError(f"row {row['suite']}/{row['name']}: {row['status']} without a reason")
        return row
    if row["status"] != "ok":
        raise ValueError(f"row {row['suite']}/{row['name']}: status {row['status']!r}")
    for label, t in row["times_s"].items():
        s = t["samples"]
        if not s or t["n"] != len(s) or t["min"] != min(s) or t["max"] != max(s) or \
                abs(t["median"] - statistics.median(s)) > 1e-12 * max(1.0, abs(t["median"])):
            raise ValueError(f"row {row['suite']}/{row['name']}: times_s[{label}] are not the stats of its samples")
    for name, r in row["ratios"].items():
        value = resolve(row, r["num"]) / resolve(row, r["den"])
        if abs(value - r["value"]) > 1e-9 * max(1.0, abs(value)):
            raise ValueError(f"row {row['suite']}/{row['name']}: ratio {name} = {r['value']} but "
                             f"{r['num']} / {r['den']} = {value}")
    return row


def append(path, row):
    validate_row(row)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def read(path):
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON row ({e})") from e
    return rows
