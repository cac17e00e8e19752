"""DOFA-CLIP ViT-B/16 @224 (GeoLB-ViT-B-16-SigLIP) as their training script runs it: SigLIP towers, the text tower
locked, AdamW lr 5e-4 (1000 warm-up steps, cosine), β = (0.9, 0.98), eps 1e-6 (open_clip's defaults for ViT
towers), weight decay 1e-7, no gradient clipping (their ddp_train*.sh passes no --grad-clip-norm), the logit scale
clamped to [0, ln 100] after every step (open_clip train.py), global batch 840 (6 GPUs × 140), MaKA scale 1.0 with
cached features of three teachers (DINOv2-L/14-reg and ViT-L/16 AugReg through translators; a SigLIP teacher
compared without translator).

The B/16 teacher set is an extrapolation: their released MaKA asserts the student width 1152 (so400m) and
compares the SigLIP so400m teacher's tokens directly, which a 768-wide student cannot; we use SigLIP B/16 as the
direct teacher, as their commented base config suggests. No released run trained B/16 with MaKA as written.

Point data.path at shards whose teacher features `geolink-jax dofa-teachers` cached (each teacher's `weights` set:
its timm checkpoint), model.tokenizer at SigLIP's SentencePiece model. Cached features mean no crop: the run trains
without augmentation; `dofa_clip_b16:online` runs every teacher in the step on the crop, as theirs (README Recipes).

    geolink-jax pretrain --config dofa_clip_b16 --config.data.path=/data/geolb_shards \
        --config.model.tokenizer=sentencepiece:/models/siglip/spiece.model
"""

from geolink_jax.config import base_config
from geolink_jax.dofa_clip import maka


def teacher(t, online=False):
    """A maka.TeacherConfig as a config entry (set its `weights` to the teacher's checkpoint)."""
    import dataclasses

    out = {k: getattr(t, k) for k in ("name", "tokens", "width", "weight", "translate", "image_size", "timm",
                                      "weights")}
    return dict(out, tower=dataclasses.asdict(t.tower), online=online)


def check_arg(name, arg):
    if arg not in (None, "", "online"):
        raise ValueError(f"{name}:{arg}: the argument is 'online' (every teacher runs in the step on the crop)")
    return arg == "online"


def get_config(arg=None):
    """arg "online" (`--config dofa_clip_b16:online`): every teacher runs in the train step on the student's crop,
    as their training does (the shards need no cached features; each teacher's `weights` must be set)."""
    online = check_arg("dofa_clip_b16", arg)
    config = base_config("dofa_clip")
    config.model.update(tokenizer="sentencepiece:", lock_text=True, teachers=[
        teacher(t, online) for t in (maka.SIGLIP_B16, maka.DINOV2_L_REG, maka.VIT_L_AUGREG)])
    config.batch_size = 840
    config.epochs = 50.0
    config.optim.update(lr=5e-4, warmup_steps=1000, weight_decay=1e-7, b1=0.9, b2=0.98, eps=1e-6, clip_norm=0.0)
    config.mesh.update(data=-1, fsdp=1)
    config.model.image.dtype = config.model.text.dtype = "bfloat16"
    config.reference = reference(per_gpu=140, online=online)
    return config


def reference(per_gpu, online=False):
    """Their run: DOFA-CLIP's ddp_train*.sh (6 GPUs × per_gpu) through open_clip_train's defaults."""
    deviations = {} if online else {
        "augmentation": "with cached teacher features (the default, cheap) a record is not cropped, so that its "
                        "features describe its pixels; teachers run online (model.teachers[].online, the config "
                        "argument :online) see the crop as theirs (README Recipes)"}
    return dict(
        name="DOFA-CLIP training script (xiong-zhitong/DOFA-CLIP, code at fdeac18)",
        source="ddp_train*.sh: --lr 5e-4 --wd 1e-7 --warmup 1000 --epochs 50 --batch-size "
               f"{per_gpu} on 6 GPUs, --lock-text, no --grad-clip-norm; open_clip_train/params.py: beta1 0.9, beta2 "
               "0.98, eps 1e-6 for ViT models; open_clip_train/train.py ~l.219-221: logit_scale clamped to "
               "[0, ln 100] after every step; scheduler cosine (cosine_lr, per step)",
        values={"unit": "pairs", "records per step": f"{6 * per_gpu:,}", "accumulate": "1",
                "effective batch": f"{6 * per_gpu:,} pairs", "peak lr": "5e-4", "lr rule": "fixed",
                "warm-up": "1,000 steps", "length": "50 epochs", "clipping": "none",
                "optimiser": "AdamW β = (0.9, 0.98), eps 1e-6, weight decay 1e-7",
                "logit scale": "clamped to [0, 4.61] after every update",
                "augmentation": "random resized crop (scale 0.9-1) of every image; the teachers run on the same crop"},
        deviations=deviations)
