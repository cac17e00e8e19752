"""The preprocessing job, local worker processes: `geolink-jax preprocess` from a checkout.

    python data_pipelines/preprocess.py --input TILES_DIR --out SHARDS_DIR [--encoder e5] [--workers N] …

The per-tile computation, shard writing and manifest are library code (geolink_jax.tiles.job).
"""

import sys

from geolink_jax import cli

if __name__ == "__main__":
    sys.exit(cli.main(["preprocess", *sys.argv[1:]]))
