"""GeoLink's tile embeddings (spec §6): the unimodal ViT embeddings and the fusion extractor's hybrid map."""

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.downstream import embed as embed_lib


def make_embed_fn(geolink):
    """→ jitted fn(images [B, S, S, 3], GraphBatch) → dict(cls [B, D], patch [B, h, w, D], fusion [B, h, w, F])."""
    graphdef, params = nnx.split(geolink, nnx.Param)

    @jax.jit
    def fn(params, images, graph):
        model = nnx.merge(graphdef, params)
        enc = model.encode_image(images, key=None)
        gh, gw = enc["grid"]
        tokens = enc["tokens"].astype(jnp.float32)
        maps = model.extract(images, graph)
        return dict(cls=tokens[:, 0], patch=tokens[:, 1:].reshape(tokens.shape[0], gh, gw, -1),
                    fusion=maps[-1].astype(jnp.float32))

    return lambda images, graph: fn(params, jnp.asarray(images), jax.tree.map(jnp.asarray, graph))


def embed(geolink, tiles, batch_size=8, progress=True):
    """tiles → (rows, maps) as `downstream.embed.embed`, with cls, mean and fusion_mean columns."""
    return embed_lib.embed(make_embed_fn(geolink), tiles, batch_size, progress)


def features(geolink, wavelengths_um, modality="image"):
    """`geolink-jax evaluate` (downstream/features.py): "image" as any image MAE; "image+osm" the fusion extractor
    (spec §3.7) on the tile and its OSM graph: grid = the hybrid map [B, h, w, F], pooled its mean, levels the
    extractor's four maps (three ViT blocks and the hybrid map, UperNet's inputs in the reference's segmentation)."""
    from geolink_jax.downstream import features as features_lib
    from geolink_jax.tiles.augment import IMAGENET_MEAN, IMAGENET_STD

    if modality == "image":
        return embed_lib.image_mae_features(geolink, wavelengths_um)
    if modality != "image+osm":
        raise features_lib.unsupported("geolink", modality, ("image", "image+osm"))
    idx = embed_lib.rgb_of(wavelengths_um, "GeoLink's image encoder")
    size = geolink.cfg.vit.image_size

    def apply(model, inputs):
        images, graph = inputs
        x = embed_lib.resize_images(images[..., jnp.asarray(idx)], size)
        maps = [m.astype(jnp.float32) for m in model.extract((x - IMAGENET_MEAN) / IMAGENET_STD, graph)]
        return dict(pooled=maps[-1].mean((1, 2)), grid=maps[-1], levels=tuple(maps))

    def prepare(inputs):
        images, graph = inputs
        width = {int(v.shape[-1]) for v in graph.nodes.values()}
        if width != {geolink.cfg.osm_in_features}:
            raise ValueError(f"the tiles' OSM tag features are {'/'.join(map(str, sorted(width)))}-d; this GeoLink "
                             f"takes {geolink.cfg.osm_in_features}-d (preprocess the tiles with its tag encoder)")
        return features_lib.as_float32(images), jax.tree.map(jnp.asarray, graph)

    return features_lib.FeatureFn(geolink, apply, modality, prepare)
