"""The MAE family: image-only masked-autoencoder pretraining on the tile images of the same shards GeoLink reads
(no graphs are decoded). Batch: image float32 [B, S, S, 3], ImageNet-normalised. Weights export as a timm ViT
with the same converter as GeoLink's image branch (the parameter names are shared)."""

import jax
import numpy as np
from flax import nnx

from geolink_jax import family as family_lib
from geolink_jax.convert import timm as convert_timm
from geolink_jax.downstream import embed as embed_lib
from geolink_jax.nn import flops
from geolink_jax.nn.mae import ImageMAE, MAEConfig
from geolink_jax.tiles import commands as tile_commands
from geolink_jax.tiles import device_augment, pipeline
from geolink_jax.tiles import job as preprocess


def build(cfg, rngs):
    return ImageMAE(cfg, rngs=rngs)


def loss(model, batch, key, ctx):
    return model.loss(device_augment.step_inputs(batch, model.cfg.vit.image_size)[0], key, train=ctx.train)


def dataset(paths, manifest, config, model_cfg, process_index=0, process_count=1):
    cfg = pipeline.pipeline_config(config, manifest, model_cfg.vit.image_size, graphs=False,
                                   process_count=process_count)
    return pipeline.make_dataset(paths, cfg, process_index, process_count)


def default_data(config, workdir):
    return preprocess.bundled_tiles(f"{workdir}/data", config.data.encoder)


def abstract_batch(model_cfg, batch_size, manifest=None, data=None):
    return device_augment.abstract_images(model_cfg.vit, batch_size, manifest, data)


def example_batch(model_cfg, batch_size, seed=0):
    """The bundled tile images (cycled to batch_size), resized and normalised."""
    from PIL import Image

    from geolink_jax import samples
    from geolink_jax.tiles.augment import resize_only

    files = sorted(p for p in samples.OSM_TILES_DIR.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [resize_only(Image.open(f), model_cfg.vit.image_size) for f in files]
    return dict(image=np.stack((images * batch_size)[:batch_size]))


def flops_per_sample(model_cfg, manifest=None):
    return flops.mae_step_flops(model_cfg).train_step


def pictures(model, host_batch, workdir, count=4):
    """workdir/reconstructions.png: original | masked | reconstruction per sample of a host batch."""
    import pathlib

    from geolink_jax import pictures as pics

    images = device_augment.host_step_inputs(host_batch, model.cfg.vit.image_size, count)[0]
    graphdef, state = nnx.split(model)

    @jax.jit
    def outputs(state):
        _, aux = nnx.merge(graphdef, state).loss(images, jax.random.key(0), train=False, return_outputs=True)
        return aux["pred"], aux["mask"]

    pred, mask = jax.device_get(outputs(state))
    pics.save_figure(pics.reconstruction_figure(images, pred, mask, model.cfg.vit.patch_size,
                                                model.cfg.norm_pix_loss, "MAE, final batch"),
                     pathlib.Path(workdir) / "reconstructions.png")


def _timm_import(state_dict, cfg, source, heads=None, **_):
    cfg = cfg or MAEConfig(vit=convert_timm.infer_vit(state_dict, heads))
    # the encoder comes from the file; the MAE decoder keeps its fresh initialisation
    params, report = convert_timm.timm_into_fresh_model(state_dict, build(cfg, nnx.Rngs(0)), source)
    return params, cfg, report


def _embed(model, tiles, batch_size=8, progress=True):
    from geolink_jax.downstream import embed

    return embed.embed_images(model, tiles, batch_size, progress)


FAMILY = family_lib.Family(
    name="mae",
    config_cls=MAEConfig,
    build=build,
    loss=loss,
    dataset=dataset,
    default_data=default_data,
    abstract_batch=abstract_batch,
    example_batch=example_batch,
    flops_per_sample=flops_per_sample,
    configs={"mae_demo": "geolink_jax.mae.configs.demo", "mae_vit_b": "geolink_jax.mae.configs.vit_b"},
    converters={"timm": family_lib.Converter(convert_timm.timm_state_dict, _timm_import,
                                             "the encoder as a timm VisionTransformer", convert_timm.head_arguments,
                                             convert_timm.export_metadata)},
    embed=_embed,
    write_embeddings=lambda model, args: embed_lib.write_tile_embeddings(_embed, model, args),
    embed_arguments=embed_lib.tile_embed_arguments,
    device_augment=True,
    features=embed_lib.image_mae_features,
    preprocess=family_lib.Command("mae", "image + OSM tiles → tile graph shards (GeoLink and MAE read them)",
                                  tile_commands.preprocess_arguments, tile_commands.run_preprocess),
    pictures=pictures,
    log_keys=("loss",),
    recipe_notes=lambda cfg, config: dict(pipeline.recipe_notes(config), masking=f"image {cfg.img_mask_ratio:g}"),
)
