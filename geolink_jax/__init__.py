"""geolink_jax: multimodal remote-sensing + OpenStreetMap foundation models in JAX/Flax (after GeoLink)."""

__version__ = "0.1.0"
