"""Demo GAIR pretraining: a tiny GAIR on the bundled demo (real Sentinel-2 patches, stand-in street views), on
CPU, in a minute or two.

    geolink-jax pretrain --config gair_demo --workdir out/gair_demo
"""

from geolink_jax.config import base_config


def get_config(arg=None):
    config = base_config("gair")
    config.model.rs.update(width=64, depth=2, num_heads=4, image_size=64)
    config.model.sv.update(width=64, depth=2, num_heads=4, mlp_dim=128, image_size=64)
    config.model.location.update(hidden=128, out_dim=64)
    config.model.update(sv_budget=4, queue_size=256)
    config.data.sampling = "patch"  # or "photo" with model.sv_budget=1 (see gair/pipeline.py)
    config.batch_size = 4
    config.total_steps = 60
    config.log_every = 5
    config.checkpoint_every = 20
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 5
    return config
