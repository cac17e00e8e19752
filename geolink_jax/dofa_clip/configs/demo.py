"""Demo DOFA-CLIP pretraining: a tiny DOFA-CLIP on the bundled pairs (the real OSM tiles captioned from their tags,
real Sentinel-2 and Landsat 8 patches captioned from their bands: three band sets, so three batch shapes), with
MaKA from one cached teacher (a tiny JAX SigLIP tower with random weights: it shows the cached-feature path end to
end, it teaches nothing), on CPU in a minute or two.

    geolink-jax pretrain --config dofa_clip_demo --workdir out/dofa_clip_demo
"""

from geolink_jax.config import base_config


def get_config(arg=None):
    config = base_config("dofa_clip")
    config.model.image.update(width=64, depth=2, heads=4, mlp_dim=128, patch_size=8, image_size=64)
    config.model.text.update(vocab_size=49408, context_length=32, width=64, depth=2, heads=4, mlp_dim=128,
                             embed_dim=64)
    config.model.update(tokenizer="clip_bpe", lock_text=False, teachers=[dict(
        name="siglip_demo", tokens=16, width=32, weight=2.0, image_size=32,
        tower=dict(width=32, depth=1, heads=2, mlp_dim=64, patch_size=8, image_size=32, patch_embed="rgb",
                   taps=[-1]))])
    config.data.source_weights = dict(osm_tiles=1.0, landsat8=1.0, sentinel2=1.0)
    config.batch_size = 8
    config.total_steps = 60
    config.log_every = 5
    config.checkpoint_every = 20
    config.optim.update(lr=1e-3, warmup_steps=5, weight_decay=1e-7, b2=0.98)
    return config
