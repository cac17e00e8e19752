"""Family-free weight conversion: the rule engine (`rules`), the timm ViT image branch (`timm`), weight files
(`files`), parameter stores (`params_store`) and the UperNet head (`upernet`). Each family's own layouts live in its
folder."""

from geolink_jax.convert.files import load_weights, save_weights
from geolink_jax.convert.rules import ConversionError

__all__ = ["ConversionError", "load_weights", "save_weights"]
