"""The GeoLink model family (imagery + OpenStreetMap): family glue and named configs. The model itself is
geolink_jax.geolink.model."""
