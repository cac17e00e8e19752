"""The paper setting: GeoLink with a ViT-L/16 image encoder at 224 px, bf16 compute, FSDP over all devices.

    geolink-jax pretrain --config configs/geolink_vit_l.py --workdir gs://…/run --config.data.path=SHARDS_DIR

Known from the reference code (spec §5.1): 224/16, image mask 0.75, OSM mask 0.2, ≤10 masked nodes, temperature
0.2, norm-pix loss, bf16 autocast. Not published (spec §5.1, §10), so chosen here after Rose/MAE: AdamW (0.9, 0.95),
lr 1.5e-4·batch/256, weight decay 0.05, linear warmup over the first 5% of steps, cosine to 0,
batch 1024, 100 epochs over the 1.27M pretraining pairs.
"""

from configs import common

PRETRAIN_PAIRS = 1_270_000


def get_config(arg=None):
    config = common.base_config()
    config.model.vit.update(width=1024, depth=24, num_heads=16, image_size=224, patch_size=16)
    config.model.dtype = "bfloat16"
    config.batch_size = 1024
    epochs = 100
    config.total_steps = epochs * PRETRAIN_PAIRS // config.batch_size
    config.optim.lr = 1.5e-4 * config.batch_size / 256
    config.optim.warmup_steps = config.total_steps // 20
    config.log_every = 100
    config.checkpoint_every = 2000
    config.keep_period = 20_000
    config.data.budget_stat = "p99"  # the rare denser tiles lose random nodes (counted as dropped_nodes)
    config.data.worker_count = 8
    # ViT-L + AdamW is ~4 GB in fp32: shard parameters and moments over every device (ZeRO-3 style); the batch is
    # split over the same axis.
    config.mesh = dict(data=1, fsdp=-1, tensor=1)
    config.pictures = False
    return config
