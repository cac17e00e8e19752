"""GeoLink with a ViT-H/16 image encoder (width 1280, depth 32, 16 heads; ~630M parameters) at 224 px: the
geolink_vit_l recipe (bf16, FSDP over every device, batch 1024) at the next size up, for pods.

    geolink-jax plan --config geolink_vit_h --devices 64 --mesh data=2,fsdp=32 --chip h100,v5p
"""

from geolink_jax.geolink.configs import vit_l


def get_config(arg=None):
    config = vit_l.get_config()
    config.model.vit.update(width=1280, depth=32, num_heads=16)
    return config
