"""Named GAIR run configs: `geolink-jax pretrain --config gair_demo | gair_vit_b`."""
