"""Fixed 2-D sin-cos position embeddings (MAE style, spec §3.8), for image patches and for OSM nodes.

Both use the same rule: the first D/2 channels encode the column (x), the last D/2 the row (y); each half is
[sin(p·ω_k), cos(p·ω_k)] with ω_k = 10000^(-k/(D/4)), k = 0..D/4-1.
"""

import functools

import jax.numpy as jnp
import numpy as np


def _omega(dim, xp):
    half = dim // 2
    assert dim % 4 == 0, f"sin-cos embedding width must be divisible by 4, got {dim}"
    k = xp.arange(half // 2, dtype=xp.float64 if xp is np else xp.float32)
    return 1.0 / 10000 ** (k / (half / 2.0))


def _sincos_1d(pos, omega, xp):
    out = pos[..., None] * omega
    return xp.concatenate([xp.sin(out), xp.cos(out)], axis=-1)


@functools.lru_cache(maxsize=None)
def image_table(dim, grid_h, grid_w, cls_token=True):
    """float32 [1 + grid_h*grid_w, dim] (row-major patch order), with a leading all-zero cls slot if cls_token.

    Computed in float64 numpy like the reference, then rounded to float32 (what its checkpoints hold)."""
    omega = _omega(dim, np)
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    emb = np.concatenate([_sincos_1d(cols.reshape(-1), omega, np), _sincos_1d(rows.reshape(-1), omega, np)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    emb = emb.astype(np.float32)
    emb.flags.writeable = False
    return emb


def node_embedding(positions, dim, grid_h, grid_w):
    """Node position embedding on device (spec §3.8): mean of the sin-cos embeddings of a node's points.

    positions: float [..., 2*P] normalised (x, y) pairs in [0, 1] (P = 4 polygon, 3 line, 1 point);
    grid_h, grid_w: the patch grid (14, 14 for 224/16): x is scaled by grid_w and y by grid_h, which puts nodes in
    patch units (the reference multiplies both by √num_patches, the same for square images).
    Returns float32 [..., dim]."""
    pts = positions.astype(jnp.float32).reshape(*positions.shape[:-1], -1, 2) * jnp.array([grid_w, grid_h], jnp.float32)
    omega = _omega(dim, jnp)
    emb = jnp.concatenate([_sincos_1d(pts[..., 0], omega, jnp), _sincos_1d(pts[..., 1], omega, jnp)], axis=-1)
    return emb.mean(axis=-2)
