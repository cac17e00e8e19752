"""Runs a sweep: every run → one validated JSON row appended to `<out>/rows.jsonl`, then the report.

    geolink-jax bench --suite quick|cpu|gpu|path/to/sweep.py [--only step,mask] [--reference-repo PATH]
                      [--config.step.repeats=3 …] [--out out/bench]

Each run runs in its own child process (the parent never starts a JAX backend, so a GPU is free for the child):
memory is returned between runs, and a run that needs N devices gets them on a CPU backend as simulated devices
(`--xla_force_host_platform_device_count=N`: memory and sharding are real, speed is not); on an accelerator with
fewer devices it is recorded as skipped with the reason. A run that fails is recorded (status "error", the
exception) and the sweep goes on.
"""

import importlib
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

from geolink_jax.bench import rows, sweep

SUITES = {
    "step": ("geolink_jax.bench.model_step_bench", "run_step"),
    "mask": ("geolink_jax.bench.model_step_bench", "run_mask"),
    "remat": ("geolink_jax.bench.model_step_bench", "run_remat"),
    "pipeline": ("geolink_jax.bench.input_pipeline_bench", "run"),
    "input": ("geolink_jax.bench.input_cost_bench", "run"),
    "preprocess": ("geolink_jax.bench.preprocess_bench", "run"),
    "memory": ("geolink_jax.bench.memory_bench", "run"),
    "compile": ("geolink_jax.bench.compile_bench", "run"),
    "sigmoid": ("geolink_jax.bench.sigmoid_loss_bench", "run"),
    "reference": ("geolink_jax.bench.reference_bench", "run"),
}


def load_sweep(name):
    """A sweep by name (geolink_jax/bench/sweeps/<name>.py) or path → (base ConfigDict, [run overrides])."""
    path = pathlib.Path(name)
    if path.suffix == ".py" and path.is_file():
        spec = importlib.util.spec_from_file_location(f"bench_sweep_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        from geolink_jax.config import ConfigError

        try:
            module = importlib.import_module(f"geolink_jax.bench.sweeps.{name}")
        except ModuleNotFoundError:
            raise ConfigError(f"no sweep {name!r} (named sweeps: quick, cpu, gpu) and no file of that name") from None
    return module.get_config(), module.get_sweep()


def plan(base, runs, only=None, overrides=(), reference_repo=None):
    """The resolved run configs, in sweep order. overrides: ["--config.suite.key=value", …] applied to the base
    first (ml_collections flags: an unknown field is a ConfigError naming it and listing the valid ones)."""
    from geolink_jax import config as config_lib

    base = config_lib.load(list(overrides), base=base.copy_and_resolve_references())
    if reference_repo:
        with base.unlocked():
            base.reference.reference_repo = str(reference_repo)
    cfgs = [sweep.resolve(base, run) for run in runs]
    if only:
        unknown = set(only) - set(SUITES)
        if unknown:
            raise config_lib.ConfigError(f"--only {sorted(unknown)}: suites are {sorted(SUITES)}")
        cfgs = [c for c in cfgs if c.suite in only]
    return cfgs


def budget_s(base, overrides=()):
    """The sweep's wall-time budget (`budget_s`, after `--config.budget_s=…`; 0: none)."""
    from geolink_jax import config as config_lib

    return float(config_lib.load(list(overrides), base=base.copy_and_resolve_references()).get("budget_s", 0.0))


def run_one(cfg):
    """One run in this process → row (errors become an "error" row)."""
    import jax

    module, fn = SUITES[cfg.suite]
    n = needed_devices(cfg)
    if n > jax.device_count():
        return rows.skipped_row(cfg.suite, cfg.get("name") or cfg.suite, rows.flatten(cfg),
                                f"needs {n} devices, this {jax.default_backend()} backend has {jax.device_count()} "
                                "(on a CPU backend the runner simulates them)")
    try:
        return getattr(importlib.import_module(module), fn)(cfg)
    except Exception as e:  # record and go on: one failing run must not lose the sweep
        row = rows.new_row(cfg.suite, cfg.get("name") or cfg.suite, rows.flatten(cfg))
        row.update(status="error", reason=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-4000:])
        return row


def run_in_child(cfg, recommended=True, timeout_s=None):
    """The run in a fresh Python process → row. Every run gets its own process: memory (compiled executables,
    model state) goes back to the OS between runs, and on a CPU backend the child gets as many simulated devices as
    the run needs (--xla_force_host_platform_device_count; only the host platform reads it)."""
    devices = needed_devices(cfg)
    flags = os.environ.get("XLA_FLAGS", "")
    flags = " ".join(f for f in flags.split() if not f.startswith("--xla_force_host_platform_device_count"))
    if devices > 1:
        flags = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env = dict(os.environ, XLA_FLAGS=flags, GEOLINK_BENCH_RECOMMENDED="1" if recommended else "0")
    if cfg.suite == "reference":  # torch's OpenMP workers would otherwise spin on the cores XLA's step needs next
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "geolink_jax.bench.runner", "--one", json.dumps(cfg.to_dict()), "--row-out",
               str(out)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            row = rows.new_row(cfg.suite, cfg.get("name") or cfg.suite, rows.flatten(cfg))
            row.update(status="error", reason=f"stopped after {timeout_s:.0f} s: the sweep's time budget was spent")
            return row
        if proc.returncode or not out.exists():
            row = rows.new_row(cfg.suite, cfg.get("name") or cfg.suite, rows.flatten(cfg))
            row.update(status="error", reason=f"child process exited {proc.returncode}: {proc.stderr[-2000:]}")
            return row
        return json.loads(out.read_text())


def needed_devices(cfg):
    return int(cfg.get("devices", 1) or 1)


def estimate_s(cfgs):
    """The sweep's estimated wall time: the sum of each run's `est_s` (suite defaults in sweeps/common.py, the GPU
    sweep's own); a reference run without a checkout is skipped at once."""
    return sum(0.0 if _no_reference(c) else float(c.get("est_s", 60.0)) for c in cfgs)


def _no_reference(cfg):
    return cfg.suite == "reference" and not cfg.get("reference_repo")


def execute(cfgs, out_dir, progress=True, recommended=True, budget_s=0.0):
    """Runs every config (each in its own process), appending rows to out_dir/rows.jsonl; returns the rows.

    Prints the estimated wall time first. budget_s > 0: a run is stopped when the sweep's wall time reaches the
    budget, and the runs left are recorded as skipped."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "rows.jsonl"
    results = []
    est = estimate_s(cfgs)
    if progress:
        budget = f" (budget {budget_s / 60:.1f} min)" if budget_s else ""
        print(f"estimated runtime: {len(cfgs)} runs, ~{est / 60:.1f} min{budget}", flush=True)
    start = time.perf_counter()
    for i, cfg in enumerate(cfgs, 1):
        label = cfg.get("name") or f"{cfg.suite} {cfg.get('config', '')}".strip()
        if progress:
            print(f"[{i}/{len(cfgs)}] {cfg.suite}: {label} …", flush=True)
        t0 = time.perf_counter()
        left = budget_s - (t0 - start) if budget_s else None
        if _no_reference(cfg):
            row = rows.skipped_row(cfg.suite, label, rows.flatten(cfg),
                                   "no reference checkout given (--reference-repo PATH)")
        elif left is not None and left <= 0:
            row = rows.skipped_row(cfg.suite, label, rows.flatten(cfg),
                                   f"the sweep's time budget ({budget_s:.0f} s) was spent")
        else:
            row = run_in_child(cfg, recommended, timeout_s=left)
        row.setdefault("wall_s", time.perf_counter() - t0)
        try:
            rows.append(path, row)
        except ValueError as e:  # a malformed row is a bug in a suite: keep it visible, marked as an error
            row.update(status="error", reason=f"invalid row: {e}")
            rows.append(path, row)
        results.append(row)
        if progress:
            note = row.get("reason", "")
            print(f"    {row['status']} in {row['wall_s']:.0f} s (estimated {cfg.get('est_s', 60):.0f} s) {note[:200]}",
                  flush=True)
    if progress:
        print(f"sweep wall time {(time.perf_counter() - start) / 60:.1f} min (estimated {est / 60:.1f})", flush=True)
    return results


def apply_recommended_flags():
    """GPU: jax_optimization_level O1 unless the user chose a level (recorded in every row's env)."""
    import jax

    unset = str(jax.config.jax_optimization_level).rsplit(".", 1)[-1] in ("UNKNOWN", "DEFAULT")
    if jax.default_backend() == "gpu" and unset and "JAX_OPTIMIZATION_LEVEL" not in os.environ:
        jax.config.update("jax_optimization_level", "O1")


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="internal: one benchmark run in a child process")
    p.add_argument("--one", required=True)
    p.add_argument("--row-out", required=True)
    args = p.parse_args(argv)
    import ml_collections

    cfg = ml_collections.ConfigDict(json.loads(args.one))
    if os.environ.get("GEOLINK_BENCH_RECOMMENDED", "1") == "1":
        apply_recommended_flags()
    row = run_one(cfg)
    pathlib.Path(args.row_out).write_text(json.dumps(row))


if __name__ == "__main__":
    main()
