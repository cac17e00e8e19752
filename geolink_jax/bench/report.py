"""Result rows → a markdown table, a CSV of every field, and PNG plots (`geolink-jax bench report`).

    geolink-jax bench report --rows out/bench/rows.jsonl [--rows more.jsonl] --out out/bench

Plots (drawn only where the rows have the points): throughput vs batch (suite step, one device), step time vs
image mask ratio (suite mask, min–max bars), throughput vs devices (suite step on meshes).
"""

import csv
import io
import pathlib


def _fmt(x, digits=3):
    return f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def headline(row):
    """The one or two numbers a reader wants for this row's suite."""
    m, t = row["metrics"], row["times_s"]
    s = row["suite"]
    if s == "step":
        out = (f"{_fmt(m['samples_per_s'])} samples/s, step {_fmt(t['step']['median'])} s, "
               f"{_fmt(m['model_flops_per_s_per_device'] / 1e12)} TFLOP/s/dev")
        return out
    if s == "mask":
        return ", ".join(f"{k.removeprefix('mask_')}: {_fmt(v['median'])} s" for k, v in t.items())
    if s == "remat":
        return ", ".join(f"{k.removeprefix('remat_')}: {_fmt(v['median'])} s, "
                         f"{_fmt(m[f'temp_bytes_{k}'] / 2**30)} GiB temporaries" for k, v in t.items())
    if s == "pipeline":
        return (f"pipeline {_fmt(m['pipeline_samples_per_s'])} vs step {_fmt(m['step_samples_per_s'])} samples/s; "
                f"loop waits {_fmt(100 * m['loop_input_wait_fraction'], 2)}%")
    if s == "input":
        unit = m.get("unit", "sample").removesuffix("s")
        per = "image" if "host_ms_core_per_image" in m else "sample"
        out = f"host path {_fmt(m[f'host_ms_core_per_{per}'])}"
        if f"device_ms_core_per_{per}" in m:
            out += f" vs on-device augment {_fmt(m[f'device_ms_core_per_{per}'])}"
        return out + f" ms·core/{unit if per == 'image' else 'sample'} ({m['workers']} workers)"
    if s == "preprocess":
        return (f"relations {_fmt(m['relations_vectorised_tiles_per_s'])} vs "
                f"{_fmt(m['relations_pairwise_tiles_per_s'])}"
                f" tiles/s ({m['tiles']} tiles, {m['big_tiles']} with ≥ {m['min_features']} features)")
    if s == "memory":
        meshes = sorted({k.split(".")[0] for k in m if k.endswith(".state_bytes_compiled")},
                        key=lambda k: list(m).index(f"{k}.state_bytes_compiled"))
        return ", ".join(f"{k}: {_fmt(m[f'{k}.state_bytes_compiled'] / 2**20)} MiB" for k in meshes)
    if s == "compile":
        out = (f"{m['padded_backend_compiles']} compile(s) over {m['batches']} varied batches "
               f"({_fmt(m['padded_compile_s_total'])} s)")
        if "naive_backend_compiles" in m:
            out += f"; unpadded: {m['naive_backend_compiles']} ({_fmt(m['naive_compile_s_total'])} s)"
        return out
    if s == "sigmoid":
        counts = sorted(int(k.rsplit("_", 1)[1]) for k in m if k.startswith("blockwise_temp_bytes_"))
        return f"{m.get('per_device', '')} pairs/device, temporaries per device (MiB), dense / blockwise: " + ", ".join(
            f"{n} dev {_fmt(m[f'dense_temp_bytes_{n}'] / 2**20)} / {_fmt(m[f'blockwise_temp_bytes_{n}'] / 2**20)}"
            for n in counts)
    if s == "reference":
        return f"geolink_jax {_fmt(t['geolink_jax']['median'])} s vs official {_fmt(t['official']['median'])} s"
    return ""


def ratio_text(row):
    parts = []
    for name, r in row["ratios"].items():
        text = f"{name} {_fmt(r['value'])}"
        if "target" in r:
            text += f" ({r['op']} {_fmt(r['target'])}: {'met' if r['met'] else 'NOT met'})"
        parts.append(text)
    return "; ".join(parts)


def markdown_table(rows):
    lines = ["| suite | run | result | ratios (target) | device | jax | config |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        env = row["env"]
        device = f"{env['device_count']}× {env['device_kind']}"
        if row["status"] != "ok":
            result, ratios = f"**{row['status']}**: {row.get('reason', '')[:160]}", ""
        else:
            result, ratios = headline(row), ratio_text(row)
        cells = [row["suite"], row["name"], result, ratios, device, env["jax"], row["config_hash"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def flat_row(row):
    out = {"suite": row["suite"], "name": row["name"], "status": row["status"], "config_hash": row["config_hash"],
           "reason": row.get("reason", "")}
    out.update({f"env.{k}": v for k, v in row["env"].items()})
    out.update({f"config.{k}": v for k, v in row["config"].items()})
    for label, t in row["times_s"].items():
        out.update({f"times_s.{label}.{k}": t[k] for k in ("min", "median", "max", "n")})
    out.update({f"metrics.{k}": v for k, v in row["metrics"].items()})
    for name, r in row["ratios"].items():
        out[f"ratios.{name}"] = r["value"]
        if "target" in r:
            out[f"ratios.{name}.met"] = r["met"]
    return out


def csv_text(rows):
    flat = [flat_row(r) for r in rows]
    columns = list(dict.fromkeys(k for f in flat for k in f))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(flat)
    return buf.getvalue()


def _series(rows, suite, key_fn, x_fn, y_fn):
    series = {}
    for r in rows:
        if r["suite"] != suite or r["status"] != "ok":
            continue
        k = key_fn(r)
        if k is None:
            continue
        series.setdefault(k, []).append((x_fn(r), y_fn(r)))
    return {k: sorted(v) for k, v in series.items()}


def _label(r):
    c, env = r["config"], r["env"]
    return f"{c.get('config')} {c.get('dtype')} ({env['device_kind']})"


def plots(rows, out_dir):
    """Writes the PNG plots the rows support; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    written = []

    def save(fig, name):
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    single = _series(rows, "step", lambda r: _label(r) if r["metrics"]["devices"] == 1 else None,
                     lambda r: r["config"]["batch"], lambda r: r["metrics"]["samples_per_s"])
    if any(len(v) > 1 for v in single.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, pts in single.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=k)
        ax.set(xlabel="batch size", ylabel="samples / s", title="Train-step throughput vs batch", xscale="log")
        ax.set_xticks(sorted({p[0] for v in single.values() for p in v}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "throughput_vs_batch.png")

    mask_rows = [r for r in rows if r["suite"] == "mask" and r["status"] == "ok"]
    if mask_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in mask_rows:
            pts = sorted((float(k.removeprefix("mask_")), v) for k, v in r["times_s"].items())
            x = [p[0] for p in pts]
            med = [p[1]["median"] for p in pts]
            err = [[p[1]["median"] - p[1]["min"] for p in pts], [p[1]["max"] - p[1]["median"] for p in pts]]
            ax.errorbar(x, med, yerr=err, fmt="o-", capsize=3, label=f"{_label(r)} batch {r['config']['batch']}")
        ax.set(xlabel="image mask ratio", ylabel="train step (s, median; bars min–max)",
               title="Sparse encoding: step time vs mask ratio")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "step_time_vs_mask_ratio.png")

    scaling = _series(rows, "step", lambda r: f"{_label(r)} global batch {r['config']['batch']}",
                      lambda r: r["metrics"]["devices"], lambda r: r["metrics"]["samples_per_s"])
    scaling = {k: v for k, v in scaling.items() if len({p[0] for p in v}) > 1}
    if scaling:
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, pts in scaling.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=k)
        ax.set(xlabel="devices (data parallel)", ylabel="samples / s", title="Scaling vs devices")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "scaling_vs_devices.png")
    return written


def write_report(rows, out_dir, title="geolink_jax benchmark results", command=None):
    """results.md (table + plots), results.csv and the PNGs in out_dir; returns the markdown path."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.csv").write_text(csv_text(rows))
    pngs = plots(rows, out_dir)
    md = [f"# {title}", ""]
    if command:
        md += ["Produced by:", "", "```", command, "```", ""]
    md += [markdown_table(rows), ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    path = out_dir / "results.md"
    path.write_text("\n".join(md) + "\n")
    return path
