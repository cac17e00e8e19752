"""Flax NNX GeoLink: sparse masked ViT, typed-relation OSM GAT, Set2Set readout, cross-modal fusion block."""

from geolink_jax.models.geolink import PARAMETER_NAMES, GeoLink, GeoLinkConfig
from geolink_jax.models.vit import VIT_PRESETS, ViTConfig

__all__ = ["GeoLink", "GeoLinkConfig", "PARAMETER_NAMES", "VIT_PRESETS", "ViTConfig"]
