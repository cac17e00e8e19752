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
