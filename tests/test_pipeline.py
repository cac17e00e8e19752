"""Augmentation (spec §5.2) and the grain pipeline over real preprocessed shards: determinism, resume, shapes,
and one GeoLink loss on a pipeline batch."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import tiny_model, ufz_graphs

from geolink_jax import samples
from geolink_jax.osm import NODE_TYPES
from geolink_jax.tiles import augment as aug
from geolink_jax.tiles.graph_batch import GraphBudget
from geolink_jax.tiles.pipeline import TilePipelineConfig, make_dataset, to_graph_batch


@pytest.fixture(scope="module")
def shards(ufz_shards):
    return sorted(ufz_shards.glob("*.array_record-*"))


def _cfg(**kw):
    base = dict(batch_size=2, budget=GraphBudget.default(), augment=aug.AugmentConfig(image_size=64), seed=0)
    base.update(kw)
    return TilePipelineConfig(**base)


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_crop_keeps_nodes_inside_and_their_edges():
    g = ufz_graphs()[0]
    box = (0.2, 0.1, 0.5, 0.6)
    out, bbox = aug.crop_graph(g, box)
    for t in NODE_TYPES:
        p = g.positions[t]
        inside = (p[:, 0] >= 0.2) & (p[:, 0] <= 0.7) & (p[:, 1] >= 0.1) & (p[:, 1] <= 0.7)
        assert out.num_nodes(t) == inside.sum()
        np.testing.assert_array_equal(out.features[t], g.features[t][inside])
        assert (out.positions[t] >= 0).all() and (out.positions[t] <= 1).all()
        # positions are renormalised to the bbox
        lo, hi = np.array(bbox[:2]), np.array(bbox[2:])
        back = out.positions[t].reshape(-1, 2) * (hi - lo) + lo
        np.testing.assert_allclose(back, g.positions[t][inside].reshape(-1, 2), atol=1e-5)
    assert bbox[0] <= 0.2 and bbox[2] >= 0.7 - 1e-9
    src_t, dst_t = "line", "line"
    def pairs(h):
        return {(tuple(h.features[src_t][s][:3]), tuple(h.features[dst_t][d][:3]))
                for s, d in h.edge_index["line_to_line"].T}

    before, after = pairs(g), pairs(out)
    assert after and after <= before
    nobody, _ = aug.crop_graph(g, (2.0, 2.0, 0.1, 0.1))
    assert nobody is None


def test_crop_aspect_faithful_is_always_tall():
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, _, w, h = aug.crop_box(rng, faithful=True)
        assert h >= w  # the reference's [1.5, 2.25) aspect
    ratios = [aug.crop_box(rng, faithful=False) for _ in range(400)]
    hw = np.array([h / w for _, _, w, h in ratios])
    assert hw.min() >= 0.74 and hw.max() <= 1.34 and (hw < 1).any() and (hw > 1).any()


def test_flip_and_colour_jitter():
    g = ufz_graphs()[0]
    f = aug.flip_graph(g)
    np.testing.assert_allclose(f.positions["polygon"][:, 0::2], 1 - g.positions["polygon"][:, 0::2])
    np.testing.assert_array_equal(f.positions["polygon"][:, 1::2], g.positions["polygon"][:, 1::2])
    from PIL import Image

    rgb = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    # brightness alone: torchvision's PIL path scales every channel by the drawn factor
    rng = np.random.default_rng(3)
    factor = np.random.default_rng(3).uniform(0.6, 1.4)
    out = np.asarray(aug.color_jitter(rgb, rng, (0.4, 0, 0, 0)), np.float32)
    np.testing.assert_allclose(out, np.clip(np.asarray(rgb, np.float32) * factor, 0, 255), atol=1.0)
    # a hue shift moves the HSV hue channel by trunc(f·255) mod 256 and keeps the value channel
    shifted = aug._shift_hue(rgb, -0.05)
    h0, h1 = (np.asarray(im.convert("HSV"), np.int32)[..., 0] for im in (rgb, shifted))
    assert np.all(np.abs((h1 - h0) % 256 - (256 - 12)) <= 1)  # trunc(−12.75) = −12; HSV→RGB→HSV rounds by ≤ 1
    np.testing.assert_allclose(np.asarray(shifted.convert("HSV"))[..., 2], np.asarray(rgb.convert("HSV"))[..., 2],
                               atol=1)
    same = np.asarray(aug._shift_hue(rgb, 0.0), np.int32)
    diff = np.abs(same - np.asarray(rgb, np.int32))
    assert diff.max() <= 6 and diff.mean() < 1.5  # no shift: only the rounding of PIL's uint8 HSV round trip


def test_augment_is_deterministic_per_seed_and_normalised():
    g = ufz_graphs()[0]
    image = (np.random.default_rng(1).random((224, 224, 3)) * 255).astype(np.uint8)
    cfg = aug.AugmentConfig(image_size=96)
    a1, g1 = aug.augment(image, g, np.random.default_rng(5), cfg)
    a2, g2 = aug.augment(image, g, np.random.default_rng(5), cfg)
    a3, _ = aug.augment(image, g, np.random.default_rng(6), cfg)
    assert a1.shape == (96, 96, 3) and a1.dtype == np.float32
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)
    assert all(np.array_equal(g1.positions[t], g2.positions[t]) for t in NODE_TYPES)
    # ImageNet normalisation: mean pixel 0.5 maps near (0.5 - mean) / std
    flat = aug.normalize(np.full((2, 2, 3), 0.5, np.float32))
    np.testing.assert_allclose(flat[0, 0], (0.5 - aug.IMAGENET_MEAN) / aug.IMAGENET_STD, rtol=1e-6)


def test_draft_decode_matches_full_decode_on_a_real_jpeg():
    """draft_decode crops the same box from a DCT-downscaled decode: same graph, nearly the same pixels, and the
    JPEG really was decoded at a reduced scale."""
    import glob

    from PIL import Image

    path = sorted(glob.glob(str(samples.OSM_TILES_DIR / "*" / "*.jpg")))[0]
    g = ufz_graphs()[0]
    full_cfg = aug.AugmentConfig(image_size=48, color_jitter_prob=0.0, flip=False)
    draft_cfg = dataclasses.replace(full_cfg, draft_decode=True)
    for seed in range(4):
        lazy = Image.open(path)
        a, ga = aug.augment(np.asarray(Image.open(path).convert("RGB")), g, np.random.default_rng(seed), full_cfg)
        b, gb = aug.augment(lazy, g, np.random.default_rng(seed), draft_cfg)
        assert lazy.size[0] < Image.open(path).size[0]  # decoded at 1/2 (or less)
        assert all(np.array_equal(ga.positions[t], gb.positions[t]) for t in NODE_TYPES)
        diff = np.abs(a - b) * aug.IMAGENET_STD  # back to [0, 1] pixel units
        assert diff.mean() < 0.03, (seed, diff.mean())
        assert not np.array_equal(a, b)  # a different resampling path, not the same code run twice


def test_pipeline_is_deterministic_and_resumes_exactly(shards):
    it_a, it_b = iter(make_dataset(shards, _cfg())), iter(make_dataset(shards, _cfg()))
    first = [next(it_a) for _ in range(3)]
    assert all(_equal(x, next(it_b)) for x in first)
    other = next(iter(make_dataset(shards, _cfg(seed=1))))
    assert not _equal(first[0], other)
    state = it_a.get_state()
    expected = [next(it_a) for _ in range(4)]  # crosses the 6-tile epoch boundary (3 batches per epoch)
    resumed = iter(make_dataset(shards, _cfg()))
    resumed.set_state(state)
    assert all(_equal(e, next(resumed)) for e in expected)
    b = first[0]
    assert b["image"].shape == (2, 64, 64, 3) and b["image"].dtype == np.float32
    for t in NODE_TYPES:
        assert b["graph"]["nodes"][t].shape == (2, GraphBudget.default().nodes[t], 512)
    assert b["stats"]["dropped_nodes"].shape == (2,)


def test_any_process_count_reads_the_same_global_batches_each_process_only_its_rows(shards):
    """Processes p of n, b rows each, stacked in process order = the one-process batch of n·b, row for row
    (augmentation included), over an epoch boundary; each process's position is its batch count."""
    one = iter(make_dataset(shards, _cfg(batch_size=4)))
    parts = [iter(make_dataset(shards, _cfg(batch_size=2), process_index=p, process_count=2)) for p in range(2)]
    for step in range(4):
        whole = next(one)
        halves = [next(it) for it in parts]
        stacked = jax.tree.map(lambda *x: np.concatenate(x), *halves)
        assert _equal(whole, stacked), step
    assert [it.get_state() for it in parts] == [one.get_state()] * 2 == [{"next_index": 4}] * 2


def test_pipeline_batch_feeds_the_model(shards):
    b = next(iter(make_dataset(shards, _cfg(batch_size=4))))
    graph = jax.tree.map(jnp.asarray, to_graph_batch(b))
    total, aux = jax.jit(lambda m, x, g, k: m.loss(x, g, k))(tiny_model(), jnp.asarray(b["image"]), graph,
                                                            jax.random.key(0))
    assert np.isfinite(total) and int(aux["samples_without_nodes"]) >= 0


def test_eval_mode_has_no_randomness(shards):
    cfg = _cfg(train=False, batch_size=3)
    a = list(make_dataset(shards, cfg))
    b = list(make_dataset(shards, dataclasses.replace(cfg, seed=7)))
    assert len(a) == 2 and all(_equal(x, y) for x, y in zip(a, b))
