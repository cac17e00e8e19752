"""Preprocessing jobs: image tiles + OSM vectors → tile graphs → ArrayRecord shards (local, Beam, TFDS)."""
