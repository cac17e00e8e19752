"""GeoLink with a ViT-B/16 image encoder at 224 px, bf16 compute, pure data parallelism.

    geolink-jax pretrain --config geolink_vit_b --workdir DIR --config.data.path=SHARDS_DIR

Same recipe as geolink_vit_l (the paper setting) with the smaller encoder: ~100M parameters fit replicated on
every device, so the default mesh is data-parallel only (set --config.mesh.fsdp=N to shard them)."""

from geolink_jax.geolink.configs import vit_l


def get_config(arg=None):
    config = vit_l.get_config()
    config.model.vit.update(width=768, depth=12, num_heads=12)
    config.mesh = dict(data=-1, fsdp=1, tensor=1)
    return config
