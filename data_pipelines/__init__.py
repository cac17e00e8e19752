"""Job entry points run from a checkout: preprocessing (local, Beam) and the TFDS builder. The library code they
call lives in geolink_jax.data."""
