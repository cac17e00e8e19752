"""Flax NNX models: the sparse masked ViT and MAE decoder (ImageMAE), and GeoLink (ImageMAE + typed-relation OSM
GAT, Set2Set readout, cross-modal fusion block)."""

from geolink_jax.models.geolink import PARAMETER_NAMES, GeoLink, GeoLinkConfig
from geolink_jax.models.mae import ImageMAE, MAEConfig
from geolink_jax.models.vit import VIT_PRESETS, ViTConfig

__all__ = ["GeoLink", "GeoLinkConfig", "ImageMAE", "MAEConfig", "PARAMETER_NAMES", "VIT_PRESETS", "ViTConfig"]
