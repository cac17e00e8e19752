"""DOFA-CLIP ViT-B/16 @224 (GeoLB-ViT-B-16-SigLIP) as their training script runs it: SigLIP towers, the text tower
locked, AdamW lr 5e-4 (1000 warm-up steps), weight decay 1e-7, global batch 840 (6 GPUs × 140), MaKA scale 1.0
with cached features of three teachers (their SigLIP teacher at B size, as their commented base config: compared
without translator; DINOv2-L/14-reg and ViT-L/16 AugReg through translators). Point data.path at shards whose
teacher features `geolink-jax dofa-teachers` cached; model.tokenizer at SigLIP's SentencePiece model.

    geolink-jax pretrain --config dofa_clip_b16 --config.data.path=/data/geolb_shards \
        --config.model.tokenizer=sentencepiece:/models/siglip/spiece.model
"""

from geolink_jax.config import base_config
from geolink_jax.dofa_clip import maka


def teacher(t):
    return {k: getattr(t, k) for k in ("name", "tokens", "width", "weight", "translate", "image_size")}


def get_config(arg=None):
    config = base_config("dofa_clip")
    config.model.update(tokenizer="sentencepiece:", lock_text=True, teachers=[
        teacher(maka.SIGLIP_B16), teacher(maka.DINOV2_L_REG), teacher(maka.VIT_L_AUGREG)])
    config.batch_size = 840
    config.epochs = 50.0
    config.optim.update(lr=5e-4, warmup_steps=1000, weight_decay=1e-7, b1=0.9, b2=0.98)
    config.mesh.update(data=-1, fsdp=1)
    config.model.image.dtype = config.model.text.dtype = "bfloat16"
    return config
