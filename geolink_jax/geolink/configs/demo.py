"""Demo pretraining: a tiny GeoLink on the bundled sample tiles, on CPU, in a few minutes.

    geolink-jax pretrain --config demo --workdir out/demo [--config.total_steps=60 …]
"""

from geolink_jax.config import base_config


def get_config(arg=None):
    config = base_config("geolink")
    config.model.vit.update(width=64, depth=2, num_heads=4, image_size=64)
    config.model.update(decoder_width=64, decoder_heads=4, fusion_dim=64, fusion_heads=4, osm_hidden=64,
                        graph_embed_dim=64, contrastive_dim=32)
    config.batch_size = 4
    config.data.draft_decode = True  # 64 px outputs from ~230 px JPEGs: decode at half scale (see data/augment.py)
    config.total_steps = 60
    config.log_every = 5
    config.checkpoint_every = 20
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 5
    return config
