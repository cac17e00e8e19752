"""The README's example end-of-run pictures: each family's demo pretrained on its bundled data, its pictures copied
to benchmarks/results/pictures/<family>_<name>.png.

    python benchmarks/example_pictures.py [--work out/pictures]   # ~6 min on 2 cores
"""

import argparse
import pathlib
import shutil
import subprocess
import sys

DEMOS = {"geolink": "demo", "mae": "mae_demo", "gair": "gair_demo", "dofa_clip": "dofa_clip_demo"}
OUT = pathlib.Path(__file__).resolve().parent / "results" / "pictures"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="out/pictures")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for family, config in DEMOS.items():
        workdir = pathlib.Path(args.work) / family
        shutil.rmtree(workdir, ignore_errors=True)
        cmd = [sys.executable, "-m", "geolink_jax.cli", "pretrain", "--config", config, "--workdir", str(workdir),
               "--no-progress"]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        for png in sorted(workdir.glob("*.png")):
            shutil.copy(png, OUT / f"{family}_{png.name}")
            print(f"  {OUT / f'{family}_{png.name}'}")


if __name__ == "__main__":
    main()
