"""The README's plan table: `geolink-jax plan` for the GeoLink ViT-B/L/H configs at 8, 64 and 256 devices (the
config's own mesh, pure FSDP for L/H, data parallel for B; global batch 1024), read on H100 and TPU v5p.

    python benchmarks/plan_table.py [--out benchmarks/results/plans]   # ~20 min on 2 cores; one process per plan
    python benchmarks/plan_table.py --configs gair_vit_b,dofa_clip_b16,dofa_clip_so400m   # the other families

Writes one JSON per plan, a picture of the MFU bound against the device count (plans/mfu_bound_vs_devices.png)
and prints the markdown table.
"""

import argparse
import json
import pathlib
import subprocess
import sys

from geolink_jax import config as config_lib

CONFIGS = ("geolink_vit_b", "geolink_vit_l", "geolink_vit_h")
DEVICES = (8, 64, 256)
CHIPS = ("h100", "v5p")


def gib(x):
    return f"{x / 2 ** 30:.1f}"


def row(p):
    m = p["measured"]
    cells = [m["config"], str(m["devices"]), ",".join(f"{k}={v}" for k, v in m["mesh"].items() if v > 1),
             f"{m['params'] / 1e6:.0f}M", gib(m["memory"]["params"] + m["memory"]["optimizer"]),
             gib(m["memory"]["peak"]), f"{m['flops']['analytic_per_device'] / 1e12:.2f}",
             gib(sum(c["traffic_bytes"] for c in m["collectives"].values()))]
    for chip in CHIPS:
        r = p["rooflines"][chip]
        fit = "" if r["fits"] else " **does not fit**"
        cells.append(f"{r['step_s'] * 1e3:.0f} ms, MFU ≤ {100 * r['mfu']:.0f}% ({r['bound']}){fit}")
    return "| " + " | ".join(cells) + " |"


def picture(out, configs=CONFIGS):
    """MFU bound (roofline) against devices, one line per config and chip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for config in configs:
        for chip, style in zip(CHIPS, ("-o", "--s")):
            points = [(d, json.loads((out / f"{config}_{d}.json").read_text())["rooflines"][chip]["mfu"])
                      for d in DEVICES if (out / f"{config}_{d}.json").exists()]
            if points:
                ax.plot(*zip(*points), style, label=f"{config.removeprefix('geolink_')} {chip}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(DEVICES, [str(d) for d in DEVICES])
    ax.set_xlabel("devices (the config's own global batch and mesh)")
    ax.set_ylabel("MFU bound (roofline)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("compile-only plans: compute vs collectives")
    fig.tight_layout()
    fig.savefig(out / ("mfu_bound_vs_devices.png" if configs == CONFIGS else "mfu_bound_vs_devices_families.png"),
                dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/plans")
    ap.add_argument("--table-only", action="store_true", help="render the table from the JSON files already there")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="named configs, comma-separated")
    args = ap.parse_args()
    configs = tuple(c for c in args.configs.split(",") if c)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for config in configs:
        for devices in DEVICES:
            path = out / f"{config}_{devices}.json"
            if args.table_only or path.exists():
                continue
            # configs that count epochs need an example count to derive their schedule (not the compiled step)
            cmd = [sys.executable, "-m", "geolink_jax.cli", "plan", "--config", config, "--devices", str(devices),
                   "--chip", ",".join(CHIPS), "--json", str(path), "--config.data.num_examples=1000000"]
            batch = config_lib.load_file(config).batch_size
            if batch < devices and devices % batch == 0:
                # fewer records than devices (GAIR: 128 patches of 32 photos): one record per data shard, the heads
                # split over the rest; more records would overflow a queue sized to the step's photos
                cmd += ["--mesh", f"data={batch},tensor={devices // batch}"]
            elif batch % devices:  # a global batch the devices do not divide: one record a device
                cmd += ["--batch", str(max(devices, batch - batch % devices))]
            print(" ".join(cmd), flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:  # a plan the config cannot make (its last line says why): reported, the rest go on
                print(f"  failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
    picture(out, configs)
    print("| config | devices | mesh | params | params + AdamW / device (GiB) | peak / device (GiB) | "
          "TFLOP / device / step | collectives sent / device (GiB) | H100 | TPU v5p |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        for devices in DEVICES:
            path = out / f"{config}_{devices}.json"
            if path.exists():
                print(row(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
