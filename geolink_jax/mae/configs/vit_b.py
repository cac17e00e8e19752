"""MAE ViT-B/16 at 224 px, bf16: the unimodal baseline with geolink_vit_b's image branch and recipe.

    geolink-jax pretrain --config mae_vit_b --workdir DIR --config.data.path=SHARDS_DIR
"""

from geolink_jax.config import base_config, load_file, transfer


def get_config(arg=None):
    return transfer(base_config("mae"), load_file("geolink_vit_b"))  # by its name
