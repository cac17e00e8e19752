"""DOFA-CLIP So400m/14 @384 (GeoLB-ViT-14-SigLIP-so400m-384, the released model): width 1152, depth 27, MLP 4304,
MAP head; text tower locked; global batch 210 (6 GPUs × 35); their three teachers with cached features (SigLIP
so400m-384 compared without translator, weight 2; DINOv2-L/14-reg and ViT-L/16 AugReg through translators).

    geolink-jax pretrain --config dofa_clip_so400m --config.data.path=/data/geolb_shards \
        --config.model.tokenizer=sentencepiece:/models/siglip/spiece.model
"""

from geolink_jax.dofa_clip import maka
from geolink_jax.dofa_clip.configs import b16
from geolink_jax.dofa_clip.text import SO400M_TEXT
from geolink_jax.dofa_clip.towers import SO400M_384


def get_config(arg=None):
    """arg "online": every teacher runs in the train step on the student's crop (see dofa_clip_b16)."""
    online = b16.check_arg("dofa_clip_so400m", arg)
    config = b16.get_config(arg)
    image = {k: getattr(SO400M_384, k) for k in ("width", "depth", "heads", "mlp_dim", "patch_size", "image_size")}
    config.model.image.update(image)
    config.model.text.update({k: getattr(SO400M_TEXT, k) for k in ("width", "depth", "heads", "mlp_dim",
                                                                   "embed_dim")})
    config.model.teachers = [b16.teacher(t, online) for t in (maka.SIGLIP_SO400M, maka.DINOV2_L_REG,
                                                               maka.VIT_L_AUGREG)]
    config.batch_size = 210
    config.reference = b16.reference(per_gpu=35, online=online)
    config.mesh.update(data=-1, fsdp=8)
    return config
