"""Named benchmark sweeps (`geolink-jax bench --suite quick|cpu|gpu`): ml_collections configs of per-suite defaults
and the list of runs."""
