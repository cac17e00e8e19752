"""GAIR as released: CROMA-base RS encoder (10 bands, 96 px), ViT-B/16 street views (224 px), GeoCLIP-style location
encoder, NILI, up to 32 photos per patch, a 4096-location queue, bf16 compute.

Optimiser as the research code: AdamW β = (0.9, 0.95), wd 0.05, base lr 1.5e-6 per 256 samples scaled linearly
with the batch (their logged 1.44e-4 at an effective batch of 256 × 96 accumulation steps), 10 warm-up epochs of
300. Their sample is one photo with a patch; ours is a patch with up to 32 photos.

    geolink-jax pretrain --config gair_vit_b --config.data.path=<preprocessed patches>
"""

from geolink_jax.config import base_config


def get_config(arg=None):
    config = base_config("gair")
    config.model.update(sv_budget=32, dtype="bfloat16")
    config.batch_size = 128  # × 32 photos: 4096 street views per step, one queue length
    config.epochs = 300.0
    config.optim.update(lr=1.5e-6, lr_base_batch=256, warmup_fraction=10 / 300, weight_decay=0.05, b1=0.9, b2=0.95)
    return config
