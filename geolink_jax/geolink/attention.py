"""The fusion block's node→image attention for one OSM node of a tile (spec §6, the reference's
`get_osm_to_img_attn`), as numbers and as a picture."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geolink_jax import pictures
from geolink_jax.osm import NODE_TYPES
from geolink_jax.tiles import downstream as tiles_lib

# The point a node is drawn at: polygon centroid (4th position pair), line centroid (1st pair), the point itself.
_ANCHOR = {"polygon": slice(6, 8), "line": slice(0, 2), "point": slice(0, 2)}


def node_attention(geolink, tile):
    """→ dict(attention float32 [K, L] over the image tokens, valid bool [K], node_type [K], node_row [K],
    node_xy float32 [K, 2], grid (gh, gw)) for the tile's fusion nodes (the first max_fusion_nodes, type-major)."""
    _, images, graph, _ = next(tiles_lib.batches([tile], 1))
    graphdef, params = nnx.split(geolink, nnx.Param)

    @jax.jit
    def run(params, images, graph):
        _, info = nnx.merge(graphdef, params).extract(images, graph, return_attention=True)
        return info

    info = jax.tree.map(np.asarray, run(params, jnp.asarray(images), jax.tree.map(jnp.asarray, graph)))
    budgets = [graph.nodes[t].shape[1] for t in NODE_TYPES]
    offsets = np.cumsum([0] + budgets)
    types, rows, xy = [], [], []
    for slot in info["node_index"][0]:
        ti = int(np.searchsorted(offsets, slot, side="right") - 1)
        t, row = NODE_TYPES[ti], int(slot - offsets[ti])
        types.append(t)
        rows.append(row)
        xy.append(graph.positions[t][0, row, _ANCHOR[t]])
    gs = geolink.cfg.vit.image_size // geolink.cfg.vit.patch_size
    return dict(attention=info["attention"][0].astype(np.float32), valid=info["node_valid"][0].astype(bool),
                node_type=types, node_row=rows, node_xy=np.asarray(xy, np.float32), grid=(gs, gs))


def node_attention_picture(geolink, tile, node):
    """Heat map of fusion node `node` (index among the tile's valid fusion nodes) → (PIL image, info dict)."""
    att = node_attention(geolink, tile)
    n = int(att["valid"].sum())
    if not 0 <= node < n:
        raise ValueError(f"{tile.tile_id}: node {node} out of range (the tile has {n} fusion nodes)")
    label = f"{tile.tile_id}: {att['node_type'][node]} #{att['node_row'][node]}"
    pic = pictures.attention_figure(tile.image, att["attention"][node], att["grid"], att["node_xy"][node], label)
    return pic, dict(type=att["node_type"][node], row=att["node_row"][node], num_nodes=n,
                     attention=att["attention"][node])
