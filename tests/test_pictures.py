"""Pictures: the MAE reconstruction arrays and figure, the OSM graph overlay and its legend, caption display."""

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


def test_reconstruction_pastes_visible_patches_and_undoes_norm_pix(tmp_path):
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
    np.testing.assert_allclose(pictures.per_image_loss(images, perfect, mask, 8), 0.0, atol=1e-8)
    zero_loss = pictures.per_image_loss(images, np.zeros_like(target), mask, 8, norm_pix=False)
    np.testing.assert_allclose(zero_loss, [(target[i] ** 2).mean(-1)[mask[i] == 1].mean() for i in range(2)],
                               rtol=1e-5)
    png = _rendered(pictures.reconstruction_figure(images, perfect, mask, 8), tmp_path / "r.png")
    assert png.shape[:2] == (int(100 * (2.4 * 2 + 0.9)), 750)  # one row per image
    assert _inked(png[:40]) > 0.01  # the title (mask ratio, loss) and the column headings are drawn


def _rendered(fig, path):
    pictures.save_figure(fig, path)
    return np.asarray(Image.open(path).convert("RGB"))


def _inked(region):
    """The share of a picture region that is not white background (text, lines, markers drawn there)."""
    return float((np.asarray(region) < 200).any(-1).mean())


def test_graph_figure_draws_nodes_where_their_positions_say(tmp_path):
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
    # edges in their relation's colour, and the figure's legend and title drawn beside and above the panel
    present = [r for r, n in one["n_edge"].items() if int(n)]
    assert present
    for r in present:
        c = np.asarray(pictures.RELATION_COLOURS[r], np.float32)
        drawn = (fig != plain).any(-1) & (np.abs(fig.astype(np.float32) - c).max(-1) < 60)
        assert drawn.any(), r  # pixels the overlay changed to (a blend of) the relation's colour
    png = _rendered(pictures.graph_picture(image, **one, title="tile"), tmp_path / "g.png")
    assert png.shape[:2] == (560, 950)
    assert _inked(png[:30]) > 0.005 and _inked(png[:, 600:]) > 0.02  # title; legend to the right


def test_decoded_captions_are_tidied_for_display():
    from geolink_jax.dofa_clip.tokenizer import display_text, make_tokenizer

    tok = make_tokenizer("clip_bpe", 32)
    raw = tok.decode(tok(["a craft (printer) shop, with a multi-storey car park."])[0])
    assert " ( " in raw or "( " in raw  # CLIP BPE decodes punctuation as words
    assert display_text(raw) == "a craft (printer) shop, with a multi-storey car park."
