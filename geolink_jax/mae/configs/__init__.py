"""Named MAE run configs: `geolink-jax pretrain --config mae_demo | mae_vit_b`."""
