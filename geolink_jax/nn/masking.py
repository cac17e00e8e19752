"""Random masking with static shapes, drawn on device from a JAX key (spec §4.1, §4.2, §9.2).

Image tokens: the scenic/MAE argsort pattern keeps exactly `num_keep` tokens per sample, so the encoder runs on
[B, num_keep, D] whatever the key. OSM nodes: per graph and node type, k = max(1, round(ratio·n)) of the n valid
nodes, chosen by ranking uniform noise (padded nodes rank last).
"""

import jax
import jax.numpy as jnp


def num_kept_tokens(num_tokens, mask_ratio):
    """The reference's len_keep = int(L·(1 − ratio)) (a Python int: a static shape)."""
    return int(num_tokens * (1 - mask_ratio))


def token_noise(key, batch, grid_h, grid_w, mask_scale=1):
    """Uniform noise [B, grid_h*grid_w]; with mask_scale s > 1 it is drawn on the (h/s, w/s) grid and repeated s×s,
    so whole s×s blocks are kept or masked together."""
    if mask_scale == 1:
        return jax.random.uniform(key, (batch, grid_h * grid_w))
    if grid_h % mask_scale or grid_w % mask_scale:
        raise ValueError(f"mask_scale {mask_scale} must divide the patch grid {grid_h}x{grid_w}")
    noise = jax.random.uniform(key, (batch, grid_h // mask_scale, grid_w // mask_scale))
    noise = jnp.repeat(jnp.repeat(noise, mask_scale, axis=1), mask_scale, axis=2)
    return noise.reshape(batch, grid_h * grid_w)


def token_mask(noise, num_keep):
    """noise float [B, L] → (ids_keep int32 [B, num_keep], ids_restore int32 [B, L], mask float32 [B, L]).

    Small noise is kept. ids_restore inverts the shuffle; mask is 1 for removed tokens, in the original order.
    Ties (block masking) are broken by the stable argsort, as torch.argsort does on CPU."""
    ids_shuffle = jnp.argsort(noise, axis=1, stable=True).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    mask = (ids_restore >= num_keep).astype(jnp.float32)
    return ids_shuffle[:, :num_keep], ids_restore, mask


def gather_tokens(x, ids):
    """x [B, L, D], ids int [B, K] → [B, K, D]."""
    return jnp.take_along_axis(x, ids[:, :, None], axis=1)


def unshuffle(kept, fill, ids_restore):
    """Decoder input: kept tokens [B, K, D] followed by L−K copies of `fill` [D], put back in the original order.

    Returns [B, L, D]; row l is kept[ids_keep⁻¹(l)] if token l was kept, else fill."""
    b, k, d = kept.shape
    num_tokens = ids_restore.shape[1]
    fills = jnp.broadcast_to(fill.astype(kept.dtype), (b, num_tokens - k, d))
    return gather_tokens(jnp.concatenate([kept, fills], axis=1), ids_restore)


def node_mask(key, valid, ratio):
    """Masked-node selection for one node type.

    valid: bool [B, N] (padded nodes False). Returns bool [B, N]: per graph with n > 0 valid nodes, exactly
    k = max(1, min(round(ratio·n), n)) valid nodes chosen uniformly at random; none for n = 0."""
    noise = jnp.where(valid, jax.random.uniform(key, valid.shape), jnp.inf)
    rank = jnp.argsort(jnp.argsort(noise, axis=1), axis=1)
    n = valid.sum(axis=1, keepdims=True)
    k = jnp.clip(jnp.round(ratio * n), 1, n)
    k = jnp.where(n > 0, k, 0)
    return rank < k


def select_nodes(key, candidates, max_nodes):
    """Up to `max_nodes` candidate slots per sample, chosen uniformly at random when there are more.

    candidates: bool [B, M]. Returns (idx int32 [B, K], valid bool [B, K]) with K = min(max_nodes, M) (static);
    idx points into M; slots beyond the candidate count are invalid. key None picks the first candidates in slot
    order (deterministic)."""
    b, m = candidates.shape
    max_nodes = min(max_nodes, m)
    if key is None:
        priority = jnp.broadcast_to(jnp.arange(m, dtype=jnp.float32) / m, (b, m))
    else:
        priority = jax.random.uniform(key, (b, m))
    priority = jnp.where(candidates, priority, 2.0)  # non-candidates after every candidate
    _, idx = jax.lax.top_k(-priority, max_nodes)
    valid = jnp.take_along_axis(candidates, idx, axis=1)
    return idx.astype(jnp.int32), valid
