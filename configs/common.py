"""Fields every pretraining config has (ml_collections); the named configs override what differs."""

import ml_collections

from geolink_jax.train.sharding import DEFAULT_RULES


def base_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 256  # global
    c.total_steps = 100_000
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.keep_period = 0  # also keep every N-th step forever (0: off)
    c.async_checkpoints = True
    c.on_nonfinite = "skip"  # skip the update, or "stop" (raise at the next log line)
    c.faithful_batch_groups = True  # graph-norm stats and InfoNCE negatives per device batch, as the reference
    c.tensorboard = True
    c.pictures = True  # reconstructions.png and osm_graph.png in the workdir at the end (single-host runs)
    c.distributed = False  # jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set)

    c.data = ml_collections.ConfigDict(dict(
        path="", encoder="e5", budget_stat="max", worker_count=0, read_threads=2, faithful_crop=False,
        draft_decode=False))

    c.model = ml_collections.ConfigDict(dict(
        vit=dict(width=1024, depth=24, num_heads=16, mlp_ratio=4.0, patch_size=16, image_size=224, in_channels=3),
        dtype="float32", attention_impl=None, img_mask_ratio=0.75, osm_mask_ratio=0.2,
        loss_weights=(1.0, 1.0, 1.0), graph_norm="graph", type_softmax_over_slots=False,
        global_negatives=False))
    c.model.attention_impl = ml_collections.config_dict.placeholder(str)

    c.optim = ml_collections.ConfigDict(dict(
        lr=1.5e-4, end_lr_factor=0.0, warmup_steps=2000, weight_decay=0.05, b1=0.9, b2=0.95, clip_norm=1.0,
        accumulate=1))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = [list(r) for r in DEFAULT_RULES]
    return c
