"""Checkpoint conversion between geolink_jax and the official PyTorch GeoLink / timm weights."""

from geolink_jax.convert.files import load_weights, save_weights
from geolink_jax.convert.official import (
    OFFICIAL_UNUSED, ConversionError, infer_config, official_name, official_state_dict, params_from_official, params_from_timm,
    timm_into_fresh_model, timm_state_dict)

__all__ = ["OFFICIAL_UNUSED", "ConversionError", "infer_config", "load_weights", "official_name", "official_state_dict",
           "params_from_official", "params_from_timm", "save_weights", "timm_into_fresh_model",
           "timm_state_dict"]
