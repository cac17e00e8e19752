"""Tiny GeoLink configs and real bundled graphs for the model tests."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geolink_jax.geolink.model import GeoLink, GeoLinkConfig
from geolink_jax.nn.vit import ViTConfig
from geolink_jax.osm import osm_graph
from geolink_jax.tiles.graph_batch import GraphBudget, pad_graphs


def tiny_config(**overrides):
    """ViT 64 px / patch 16 (16 tokens), width 32, 2 blocks; real 512-d node features; small hidden sizes."""
    base = dict(vit=ViTConfig(32, 2, 4, image_size=64), osm_hidden=16, graph_embed_dim=16, fusion_dim=32,
                fusion_heads=4, decoder_width=32, decoder_heads=4, contrastive_dim=8)
    base.update(overrides)
    return GeoLinkConfig(**base)


def tiny_model(seed=0, **overrides):
    return GeoLink(tiny_config(**overrides), rngs=nnx.Rngs(seed))


@functools.lru_cache(maxsize=None)
def ufz_graphs():
    """The 6 official UFZ graphs (real CLIP features), largest first."""
    return tuple(sorted(osm_graph.sample_ufz_graphs(),
                        key=lambda g: -sum(g.num_nodes(t) for t in ("polygon", "line", "point"))))


def budget_for(graphs, extra=0):
    b = GraphBudget.covering(graphs)
    return GraphBudget({t: n + extra for t, n in b.nodes.items()}, {r: e + extra for r, e in b.edges.items()})


def batch(graphs, budget=None):
    budget = budget or budget_for(ufz_graphs())
    gb, _ = pad_graphs(list(graphs), budget)
    return jax.tree.map(jnp.asarray, gb)


def images(batch_size, size=64, seed=0):
    return jax.random.normal(jax.random.key(seed), (batch_size, size, size, 3), jnp.float32)


def np_params(module):
    return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module, nnx.Param)))
