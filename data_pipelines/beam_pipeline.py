"""The preprocessing job on Apache Beam (DirectRunner, or a cluster runner given with --beam-option).

    python data_pipelines/beam_pipeline.py --input TILES_DIR --out gs://bucket/shards \
        --beam-option=--runner=DataflowRunner --beam-option=--project=… …

The pipeline itself is library code (geolink_jax.tiles.job.run_beam on geolink_jax.data.item_job); both runners
write identical shards.
"""

import sys

from geolink_jax import cli

if __name__ == "__main__":
    sys.exit(cli.main(["preprocess", "--runner", "beam", *sys.argv[1:]]))
