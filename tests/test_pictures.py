"""Pictures: the MAE reconstruction arrays and the OSM graph overlay."""

import model_helpers as mh
import numpy as np
from PIL import Image

from geolink_jax import pictures, samples
from geolink_jax.nn.vit import patchify
from geolink_jax.tiles.augment import normalize, resize_only
from geolink_jax.tiles.graph_batch import GraphBudget, pad_graphs


def _one_sample(batch):
    keys = ("positions", "n_node", "senders", "receivers", "n_edge")
    return {k: {t: np.asarray(v)[0] for t, v in getattr(batch, k).items()} for k in keys}


def test_reconstruction_pastes_visible_patches_and_undoes_norm_pix():
    rng = np.random.default_rng(0)
    images = normalize(rng.uniform(size=(2, 32, 48, 3)).astype(np.float32))
    target = np.asarray(patchify(images, 8))  # [2, 24, 192]
    mask = (rng.uniform(size=target.shape[:2]) < 0.75).astype(np.float32)
    mean, std = target.mean(-1, keepdims=True), np.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6)
    perfect = (target - mean) / std  # what a perfect norm-pix model predicts
    masked, pasted = pictures.reconstruct(images, perfect, mask, 8, norm_pix=True)
    np.testing.assert_allclose(pasted, images, atol=1e-5)
    m = np.asarray(patchify(masked, 8))
    assert np.all(m[mask == 1] == 0) and np.array_equal(m[mask == 0], target[mask == 0])
    # a wrong prediction shows only on removed patches
    _, wrong = pictures.reconstruct(images, np.zeros_like(target), mask, 8, norm_pix=False)
    w = np.asarray(patchify(wrong, 8))
    assert np.array_equal(w[mask == 0], target[mask == 0]) and np.all(w[mask == 1] == 0)
    fig = pictures.reconstruction_figure(images, perfect, mask, 8, scale=2)
    assert fig.size == (2 * 3 * 48, 2 * 2 * 32)


def test_graph_figure_draws_nodes_where_their_positions_say():
    graphs = mh.ufz_graphs()
    batch, _ = pad_graphs(graphs[:1], GraphBudget.covering(graphs))
    one = _one_sample(batch)
    name = samples.ufz_tile_names()[0]
    image = resize_only(np.asarray(Image.open(samples.UFZ_DIR / "img" / f"{name}.png").convert("RGB")), 64)
    fig = np.asarray(pictures.graph_figure(image, **one, size=200))
    plain = np.asarray(pictures.graph_figure(image, **{k: {t: np.zeros_like(v) for t, v in d.items()}
                                                       for k, d in one.items()}, size=200))
    assert fig.shape == (200, 200, 3)
    n_points = int(one["n_node"]["point"])
    assert n_points > 0
    for x, y in one["positions"]["point"][:n_points] * 200:
        if 3 <= x < 197 and 3 <= y < 197:
            assert tuple(fig[int(y), int(x)]) == pictures.NODE_COLOURS["point"]
    assert (fig != plain).any(-1).mean() > 0.05  # the overlay covers a visible share of the tile
