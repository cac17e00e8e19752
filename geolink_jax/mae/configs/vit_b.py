"""MAE ViT-B/16 at 224 px, bf16: the unimodal baseline with geolink_vit_b's image branch and recipe.

    geolink-jax pretrain --config mae_vit_b --workdir DIR --config.data.path=SHARDS_DIR
"""

from geolink_jax.config import base_config, load_file, transfer


def get_config(arg=None):
    config = transfer(base_config("mae"), load_file("geolink_vit_b"))  # by its name
    recipe = "the baseline runs GeoLink's recipe (geolink_vit_b), so that the two compare like for like"
    config.reference = dict(
        name="MAE ViT pretraining (facebookresearch/mae, PRETRAIN.md)",
        source="PRETRAIN.md: --batch_size 64 × 64 GPUs (effective 4096), --blr 1.5e-4, --epochs 800, --warmup_epochs "
               "40, --mask_ratio 0.75, --norm_pix_loss, --weight_decay 0.05; main_pretrain.py: AdamW betas (0.9, "
               "0.95), lr = blr × eff_batch / 256; engine_pretrain.py: no gradient clipping",
        values={"effective batch": "4,096 images", "peak lr": "2.4e-3", "lr rule": "1.5e-4 × effective batch / 256",
                "warm-up": "40 of 800 epochs", "length": "800 epochs", "clipping": "none",
                "optimiser": "AdamW β = (0.9, 0.95), eps 1e-8, weight decay 0.05", "masking": "image 0.75"},
        deviations={k: recipe for k in ("effective batch", "peak lr", "warm-up", "length", "clipping")})
    return config
