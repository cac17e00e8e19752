"""Demo MAE pretraining: a tiny ViT on the images of the bundled sample tiles, on CPU, in a minute.

    geolink-jax pretrain --config mae_demo --workdir out/mae_demo
"""

from geolink_jax.config import base_config


def get_config(arg=None):
    config = base_config("mae")
    config.model.vit.update(width=64, depth=2, num_heads=4, image_size=64)
    config.model.update(decoder_width=64, decoder_heads=4)
    config.batch_size = 4
    config.data.draft_decode = True
    config.total_steps = 60
    config.log_every = 5
    config.checkpoint_every = 20
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 5
    return config
