"""On-device augmentation (`data.augment_on_device`): the host makes the same draws as the host path, and the
step's crop/resize/flip/jitter/normalise and graph crop give the host path's result (spec §5.2)."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from model_helpers import ufz_graphs
from PIL import Image, ImageEnhance

from geolink_jax.osm import NODE_TYPES
from geolink_jax.tiles import augment as aug
from geolink_jax.tiles import device_augment as dev
from geolink_jax.tiles import pipeline
from geolink_jax.tiles.graph_batch import GraphBudget, pad_fitted


def _fields(graph_batch):
    return {f.name: getattr(graph_batch, f.name) for f in dataclasses.fields(graph_batch)}


def _assert_graphs_equal(a, b, what):
    for field in a:
        for key in a[field]:
            x, y = np.asarray(a[field][key]), np.asarray(b[field][key])
            assert x.shape == y.shape, (what, field, key)
            np.testing.assert_allclose(x, y, atol=1e-5, err_msg=f"{what} {field} {key}")


def test_graph_crop_in_the_step_equals_the_host_crop():
    """Random boxes (and flips) on the real UFZ graphs, plus a box with no node inside (the whole graph is kept):
    the jitted crop equals augment.crop_graph + flip_graph + padding, nodes, positions, edges and the image bbox."""
    graphs = list(ufz_graphs())
    budget = GraphBudget.covering(graphs)
    crop = jax.jit(jax.vmap(dev.crop_graph))
    rng = np.random.default_rng(0)
    boxes = [aug.crop_box(rng, False) for _ in range(4 * len(graphs))] + [(0.999, 0.999, 1e-4, 1e-4)]
    flips = [bool(rng.uniform() < 0.5) for _ in boxes]
    host_graphs, host_bboxes, kept_some = [], [], 0
    for i, (box, flip) in enumerate(zip(boxes, flips)):
        d = aug.Draw(box, flip, None)
        bbox, g = aug.crop_and_flip(d, graphs[i % len(graphs)])
        host_graphs.append(g)
        host_bboxes.append(bbox or (0.0, 0.0, 1.0, 1.0))
        kept_some += bbox is not None
    assert host_bboxes[-1] == (0.0, 0.0, 1.0, 1.0) and 0 < kept_some < len(boxes)  # both cases are exercised
    full = pad_fitted([graphs[i % len(graphs)] for i in range(len(boxes))], budget)
    out, bbox = crop(_fields(full), np.asarray(boxes, np.float32), np.asarray(flips))
    _assert_graphs_equal(_fields(pad_fitted(host_graphs, budget)), jax.device_get(out), "crop")
    np.testing.assert_allclose(np.asarray(bbox), np.asarray(host_bboxes), atol=1e-6)
    # some nodes and edges were really dropped, so the compaction was exercised
    assert sum(int(np.asarray(out["n_node"][t]).sum()) for t in NODE_TYPES) < sum(
        int(full.n_node[t].sum()) for t in NODE_TYPES)


def test_colour_ops_are_pil_level_for_level():
    """Brightness, contrast and saturation equal PIL's ImageEnhance exactly (8-bit truncation included); the hue
    shift equals PIL's HSV round trip on all but a few pixels; each would fail with float (unrounded) levels."""
    x = np.random.default_rng(1).integers(0, 256, (48, 40, 3)).astype(np.uint8)
    pil = Image.fromarray(x)
    cases = [(ImageEnhance.Brightness, dev._brightness, 1.27), (ImageEnhance.Brightness, dev._brightness, 0.66),
             (ImageEnhance.Contrast, dev._contrast, 0.71), (ImageEnhance.Contrast, dev._contrast, 1.33),
             (ImageEnhance.Color, dev._saturation, 0.62), (ImageEnhance.Color, dev._saturation, 1.38)]
    for enhancer, op, f in cases:
        expected = np.asarray(enhancer(pil).enhance(f), np.float32)
        np.testing.assert_array_equal(np.asarray(op(x.astype(np.float32), f)), expected, err_msg=f"{op} {f}")
    for f in (-0.1, 0.04, 0.09):
        d = np.abs(np.asarray(dev._hue(x.astype(np.float32), f)) - np.asarray(aug._shift_hue(pil, f), np.float32))
        assert (d > 0).mean() < 0.01 and d.mean() < 0.05, f


@pytest.fixture(scope="module")
def ufz(ufz_shards):
    manifest = json.loads((ufz_shards / "manifest.json").read_text())
    return sorted(ufz_shards.glob("*.array_record-*")), manifest


def _pipeline_cfg(manifest, on_device, size=112):
    return pipeline.TilePipelineConfig(
        batch_size=3, budget=GraphBudget.from_manifest(manifest), seed=3, read_threads=0,
        augment=aug.AugmentConfig(image_size=size, on_device=on_device),
        canvas=pipeline.canvas_size(manifest) if on_device else (0, 0))


def test_on_device_batches_are_the_host_batches(ufz):
    """Same seed, both paths, over more than an epoch of the real UFZ tiles: the step's images match the host's to
    within resampling (mean < 0.5 grey levels, 99th percentile ≤ 4), the graphs exactly, and the host ships a
    static-shaped uint8 canvas."""
    paths, manifest = ufz
    host_it = iter(pipeline.make_dataset(paths, _pipeline_cfg(manifest, False)))
    dev_it = iter(pipeline.make_dataset(paths, _pipeline_cfg(manifest, True)))
    step = jax.jit(dev.step_inputs, static_argnums=1)
    flips = jitters = 0
    for _ in range(4):
        h, d = next(host_it), next(dev_it)
        assert d["image"].dtype == np.uint8 and d["image"].shape == (3, *pipeline.canvas_size(manifest), 3)
        np.testing.assert_array_equal(h["stats"]["dropped_nodes"], d["stats"]["dropped_nodes"])
        image, graph = jax.device_get(step({k: v for k, v in d.items() if k != "stats"}, 112))
        to_levels = lambda x: (x * aug.IMAGENET_STD + aug.IMAGENET_MEAN) * 255  # noqa: E731
        diff = np.abs(to_levels(image) - np.round(to_levels(h["image"])))
        assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 4, (diff.mean(), np.percentile(diff, 99))
        _assert_graphs_equal(h["graph"], graph, "batch")
        flips += int(d["augment"]["flip"].sum())
        jitters += int((d["augment"]["jitter"] != np.array([1, 1, 1, 0])).any(-1).sum())
    assert 0 < flips < 12 and 0 < jitters < 12  # both branches of both draws were taken


def test_large_images_are_decoded_to_fit_the_canvas():
    """An image larger than the canvas is decoded at a reduced JPEG scale (then reduced) to fit; the draws and the
    box are unchanged (normalised)."""
    from io import BytesIO

    rng = np.random.default_rng(0)
    buf = BytesIO()
    Image.fromarray(rng.integers(0, 256, (700, 500, 3)).astype(np.uint8)).save(buf, "JPEG")
    pixels, params = aug.augment_for_device(Image.open(BytesIO(buf.getvalue())), np.random.default_rng(5),
                                            aug.AugmentConfig(), (256, 192))
    assert pixels.shape[0] <= 256 and pixels.shape[1] <= 192 and tuple(params["size"]) == pixels.shape[:2]
    expected = aug.draw(np.random.default_rng(5), aug.AugmentConfig())
    np.testing.assert_allclose(params["box"], expected.box, rtol=1e-6)
    assert bool(params["flip"]) == expected.flip


def test_end_of_run_pictures_show_the_augmented_batch(ufz, tmp_path):
    """The family's pictures take an on-device batch: the step's augmented images and cropped graphs are drawn."""
    from model_helpers import tiny_model

    from geolink_jax.geolink import family

    paths, manifest = ufz
    batch = next(iter(pipeline.make_dataset(paths, _pipeline_cfg(manifest, True, size=64))))
    family.pictures(tiny_model(osm_in_features=512), batch, tmp_path, count=2)
    for name in ("reconstructions.png", "osm_graph.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 64 and np.asarray(im).std() > 0


def test_a_manifest_without_image_sizes_is_one_clear_data_error():
    """Shards made before on-device augmentation: the error names the manifest and the two ways out."""
    from geolink_jax.data.shards import DataError

    with pytest.raises(DataError, match=r"^old/manifest.json: records no image sizes .*canvas_size"):
        pipeline.canvas_size({"num_records": 3}, source="old/manifest.json")
    assert pipeline.canvas_size({}, size=300) == (300, 300)
