"""Static-shape masking: image tokens (random and block), OSM nodes, the ≤K node choice; sin-cos tables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geolink_jax.nn import masking, pos_embed


def test_token_mask_keeps_exactly_num_keep_and_unshuffle_inverts():
    b, length, d = 3, 196, 5
    num_keep = masking.num_kept_tokens(length, 0.75)
    assert num_keep == 49
    noise = masking.token_noise(jax.random.key(0), b, 14, 14)
    ids_keep, ids_restore, mask = masking.token_mask(noise, num_keep)
    assert ids_keep.shape == (b, 49) and ids_restore.shape == (b, length) and mask.shape == (b, length)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), length - 49)
    for i in range(b):
        kept = set(np.asarray(ids_keep[i]).tolist())
        assert len(kept) == 49
        assert kept == set(np.nonzero(np.asarray(mask[i]) == 0)[0].tolist())
        # the kept tokens are those with the smallest noise
        assert kept == set(np.argsort(np.asarray(noise[i]))[:49].tolist())
    x = jax.random.normal(jax.random.key(1), (b, length, d))
    kept = masking.gather_tokens(x, ids_keep)
    fill = jnp.full((d,), 7.0)
    restored = np.asarray(masking.unshuffle(kept, fill, ids_restore))
    m = np.asarray(mask).astype(bool)
    np.testing.assert_array_equal(restored[~m], np.asarray(x)[~m])
    assert (restored[m] == 7.0).all()


def test_block_masking_masks_whole_blocks():
    noise = masking.token_noise(jax.random.key(3), 2, 14, 14, mask_scale=2)
    _, _, mask = masking.token_mask(noise, 48)
    grid = np.asarray(mask).reshape(2, 7, 2, 7, 2)
    assert (grid == grid[:, :, :1, :, :1]).all()  # constant within each 2x2 block
    # 49 kept tokens (ratio 0.75) is 12 blocks and a quarter, as in the reference: one block is split.
    _, _, mask = masking.token_mask(noise, masking.num_kept_tokens(196, 0.75))
    grid = np.asarray(mask).reshape(2, 7, 2, 7, 2)
    split = (grid != grid[:, :, :1, :, :1]).any(axis=(2, 4)).sum(axis=(1, 2))
    np.testing.assert_array_equal(split, 1)
    np.testing.assert_array_equal(np.asarray(mask).sum(1), 196 - 49)
    with pytest.raises(ValueError, match="mask_scale"):
        masking.token_noise(jax.random.key(3), 2, 14, 14, mask_scale=3)


def test_node_mask_fraction_per_graph():
    n_budget = 40
    counts = np.array([0, 1, 3, 7, 8, 12, 13, 17, 18, 40])
    valid = jnp.asarray(np.arange(n_budget)[None, :] < counts[:, None])
    for seed in range(3):
        masked = np.asarray(masking.node_mask(jax.random.key(seed), valid, 0.2))
        expected = np.where(counts > 0, np.maximum(1, np.minimum(np.round(0.2 * counts), counts)), 0)
        np.testing.assert_array_equal(masked.sum(1), expected)
        assert not (masked & ~np.asarray(valid)).any()  # padding is never masked
    # different keys choose different nodes
    a = np.asarray(masking.node_mask(jax.random.key(0), valid, 0.2))
    b = np.asarray(masking.node_mask(jax.random.key(1), valid, 0.2))
    assert (a != b).any()


def test_select_nodes_caps_and_is_uniform_over_candidates():
    cand = np.zeros((3, 30), bool)
    cand[0, [2, 5, 9]] = True  # fewer than K
    cand[1, ::2] = True  # 15 candidates > K
    idx, valid = masking.select_nodes(jax.random.key(0), jnp.asarray(cand), 10)
    idx, valid = np.asarray(idx), np.asarray(valid)
    assert idx.shape == (3, 10)
    assert sorted(idx[0][valid[0]].tolist()) == [2, 5, 9] and valid[0].sum() == 3
    assert valid[1].all() and all(i % 2 == 0 for i in idx[1]) and len(set(idx[1])) == 10
    assert valid[2].sum() == 0
    det, _ = masking.select_nodes(None, jnp.asarray(cand), 10)
    assert np.asarray(det)[1].tolist() == list(range(0, 20, 2))
    # K larger than the node axis shrinks to it
    idx_small, _ = masking.select_nodes(None, jnp.asarray(cand[:, :6]), 10)
    assert idx_small.shape == (3, 6)
    # over many draws every candidate of sample 1 gets picked
    seen = set()
    for s in range(20):
        i, _ = masking.select_nodes(jax.random.key(s), jnp.asarray(cand), 10)
        seen |= set(np.asarray(i)[1].tolist())
    assert seen == set(range(0, 30, 2))


def _mae_table(dim, grid):
    """The MAE recipe written out literally: meshgrid(w, h), first half from grid[0]."""
    gh = np.arange(grid, dtype=np.float32)
    gw = np.arange(grid, dtype=np.float32)
    g = np.stack(np.meshgrid(gw, gh), axis=0).reshape(2, 1, grid, grid)

    def one(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(dim // 2, g[0]), one(dim // 2, g[1])], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


def test_image_table_matches_mae_recipe():
    ours = pos_embed.image_table(64, 14, 14)
    np.testing.assert_allclose(ours, _mae_table(64, 14), atol=1e-6)
    assert ours.shape == (197, 64) and (ours[0] == 0).all()


def test_node_embedding_is_mean_of_point_embeddings():
    rng = np.random.default_rng(0)
    pos = rng.random((2, 5, 8)).astype(np.float32)  # polygons: 4 points
    ours = np.asarray(pos_embed.node_embedding(jnp.asarray(pos), 256, 14, 14))
    omega = 1.0 / 10000 ** (np.arange(64) / 64.0)

    def emb(x, y):
        ox, oy = x * 14 * omega, y * 14 * omega
        return np.concatenate([np.sin(ox), np.cos(ox), np.sin(oy), np.cos(oy)])

    for b in range(2):
        for n in range(5):
            pts = pos[b, n].reshape(4, 2).astype(np.float64)
            ref = np.mean([emb(x, y) for x, y in pts], axis=0)
            np.testing.assert_allclose(ours[b, n], ref, atol=2e-5)
    # a node at the centre of patch (row 3, col 5) sits half a patch past that patch's table entry
    centre = jnp.asarray([[5.5 / 14, 3.5 / 14]], jnp.float32)
    shifted = np.asarray(pos_embed.node_embedding(centre, 256, 14, 14))[0]
    table = pos_embed.image_table(256, 14, 14)[1 + 3 * 14 + 5]
    assert not np.allclose(shifted, table, atol=1e-3)
    corner = np.asarray(pos_embed.node_embedding(jnp.asarray([[5 / 14, 3 / 14]], jnp.float32), 256, 14, 14))[0]
    np.testing.assert_allclose(corner, table, atol=1e-5)
