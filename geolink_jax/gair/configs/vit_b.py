"""GAIR as released: CROMA-base RS encoder (10 bands, 96 px), ViT-B/16 street views (224 px), GeoCLIP-style location
encoder, NILI, up to 32 photos per patch, a 4096-location queue, bf16 compute.

The research run's recipe (commit 9c5edce: main_pretrain.py, engine_pretrain.py), in its unit, photos:
- AdamW β = (0.9, 0.95), eps 1e-8, weight decay 0.05, no gradient clipping (engine_pretrain passes no clip_grad);
- lr = 1.5e-6 × effective batch / 256 with an effective batch of 256 photos × 96 accumulation steps = 24,576
  photos: peak 1.44e-4 (their logged rate); half-cosine per iteration with 10 warm-up epochs of 300.
Ours: a record is a patch with up to 32 photos, so a step of 128 patches holds 4,096 photos (one queue length) and
6 accumulated steps make their 24,576: `derive` gives 1.5e-6 × 128 × 6 × 32 / 256 = 1.44e-4. Epochs count
patches; with 32 photos a patch an epoch sees each photo once, as theirs. Initialisation as theirs needs the
weight files: `model.student_init.rs` (CROMA's optical weights; the 12-band patch layer is re-initialised for 10
bands) and `model.teacher_init.sv` (ViT-B/16 in21k), see README "Recipes".

`gair_vit_b:photo` is the research sampling instead (one photo with its patch per record, 256 × 96 accumulated).

    geolink-jax pretrain --config gair_vit_b --config.data.path=<preprocessed patches> \
        --config.model.student_init.rs=/weights/CROMA_base.pt \
        --config.model.teacher_init.sv=/weights/vit-base-patch16-224-in21k/model.safetensors
"""

from geolink_jax.config import base_config


def get_config(arg=None):
    """arg "photo" (`--config gair_vit_b:photo`): the research sampling, one photo with its patch per record, 256
    photos a step × 96 accumulated, as their run."""
    if arg not in (None, "", "photo"):
        raise ValueError(f"gair_vit_b:{arg}: the argument is 'photo' (research sampling) or none")
    config = base_config("gair")
    config.model.update(sv_budget=32, dtype="bfloat16")
    config.data.sampling = "patch"
    config.batch_size = 128  # patches × 32 photos: 4096 street views per step, one queue length
    config.epochs = 300.0
    config.optim.update(lr=1.5e-6, lr_base_batch=256, accumulate=6, warmup_fraction=10 / 300, weight_decay=0.05,
                        b1=0.9, b2=0.95, eps=1e-8, clip_norm=0.0)
    if arg == "photo":
        config.model.sv_budget = 1
        config.data.sampling = "photo"
        config.batch_size = 256
        config.optim.accumulate = 96
    config.reference = dict(
        name="GAIR research pretraining (zpl99/GAIR, commit 9c5edce)",
        source="main_pretrain.py: lr = blr 1.5e-6 × (batch 256 × accum_iter 96) / 256, AdamW(betas=(0.9, 0.95)), "
               "weight_decay 0.05, warmup_epochs 10, epochs 300; engine_pretrain.py: no clip_grad passed to the loss "
               "scaler; util/lr_sched.py: half-cycle cosine per iteration; model_cl_RS_sc.py ~l.170-195: SV student "
               "random, SV teacher ViTModel.from_pretrained('google/vit-base-patch16-224-in21k'), RS from CROMA "
               "optical weights with a fresh 10-band linear_input, RS teacher a copy",
        values={"unit": "photos", "effective batch": "24,576 photos", "peak lr": "1.44e-4",
                "lr rule": "1.5e-6 × effective batch / 256", "warm-up": "10 of 300 epochs", "length": "300 epochs",
                "clipping": "none", "optimiser": "AdamW β = (0.9, 0.95), eps 1e-8, weight decay 0.05",
                "records per step": "256", "accumulate": "96",
                "initialisation": "student_init.rs=CROMA_base optical, teacher_init.sv=vit-base-patch16-224-in21k, "
                                  "teacher_init.rs=student",
                "sampling": "one photo and a random patch of its city per sample"},
        deviations={
            "records per step": "a record is a patch with up to 32 of its photos (4,096 photos a step, one location "
                                "queue length), not one photo: same effective batch in photos with accumulate 6",
            "accumulate": "6 steps of 4,096 photos = their 96 of 256",
            "initialisation": "the weight files are not shipped: set model.student_init.rs and model.teacher_init.sv "
                              "to the local CROMA and ViT-B/16 in21k files (README Recipes); unset, the encoders "
                              "start random and the teachers copy them",
            "sampling": "ours is the efficient default: every photo of a patch in one record, so negatives include "
                        "photos of the same patch and RS distillation is weighted per patch (README GAIR)"})
    if arg == "photo":
        config.reference.deviations = dict(
            initialisation=config.reference.deviations.initialisation,
            sampling="a photo comes with the patch that holds it (our data assign photos to their patch), not a "
                     "random patch of its city")
    return config
