"""MAE ViT-B/16 at 224 px, bf16: the unimodal baseline with GeoLink's ViT-B recipe (see geolink_vit_l).

    geolink-jax pretrain --config mae_vit_b --workdir DIR --config.data.path=SHARDS_DIR
"""

from geolink_jax.config import base_config
from geolink_jax.geolink.configs import vit_l


def get_config(arg=None):
    config = base_config("mae")
    recipe = vit_l.get_config()
    for key in ("batch_size", "epochs", "log_every", "checkpoint_every", "keep_period", "pictures"):
        config[key] = recipe[key]
    config.data.update(recipe.data)
    config.optim.update(recipe.optim)
    config.model.vit.update(width=768, depth=12, num_heads=12)
    config.model.dtype = "bfloat16"
    return config
