"""Named GeoLink run configs: `geolink-jax pretrain --config demo | geolink_vit_b | geolink_vit_l`."""
