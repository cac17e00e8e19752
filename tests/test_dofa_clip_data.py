"""DOFA-CLIP data: the bundled pairs (OSM-captioned real tiles, real Sentinel-2 and Landsat 8 bands), bad rows
reported and skipped, Beam = local, modality-homogeneous batches with a bounded number of compilations, cached
teacher features through the shards, the commands (preprocess, dofa-teachers, pretrain, zeroshot, embed) and
their one-line errors."""

import dataclasses
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from geolink_jax import cli, samples
from geolink_jax.data import shards
from geolink_jax.dofa_clip import captions, maka, pipeline, teachers, zeroshot
from geolink_jax.dofa_clip import preprocess as dp

TINY_TEACHER = maka.TeacherConfig(
    "sig", 16, 16, image_size=32,
    tower=dict(width=16, depth=1, heads=2, mlp_dim=32, patch_size=8, image_size=32, patch_embed="rgb", taps=[-1]))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return dp.bundled(tmp_path_factory.mktemp("dofa") / "data")


def records(out):
    m = json.loads((pathlib.Path(out) / "manifest.json").read_text())
    return [r for s in m["shards"] for r in shards.read_shard(pathlib.Path(out) / s["path"], dp.decode)]


def test_bundled_pairs_hold_three_real_band_sets(pairs):
    m = json.loads((pairs / "manifest.json").read_text())
    assert m["problems"]["error"] == 0 and m["num_records"] == m["num_pairs"] > 30
    bands = {g["source"]: len(g["wavelengths"]) for g in m["groups"]}
    assert bands == {"osm_tiles": 3, "landsat8": 7, "sentinel2": 13}
    recs = records(pairs)
    assert sum(g["count"] for g in m["groups"]) == len(recs) == sum(n for _, n in m["record_groups"])
    groups = pipeline.record_groups(m)
    for r, g in zip(recs, groups):  # the manifest's runs name each record's band set
        assert len(r["wavelengths"]) == len(m["groups"][g]["wavelengths"])
    s2 = next(r for r in recs if r["source"] == "sentinel2")
    img = dp.decode_image(s2)
    assert img.shape == (64, 64, 13) and img.dtype == np.uint8
    assert img[..., 3].std() > 5 and not np.array_equal(img[..., 3], img[..., 1])  # real, distinct bands
    osm = [r for r in recs if r["source"] == "osm_tiles"]
    assert any("glacier" in r["caption"] for r in osm) and any("next to" in r["caption"] for r in osm)
    assert all(r["caption"].startswith("a satellite image of ") for r in osm)


def test_osm_captions_window_the_object_and_name_its_neighbours():
    pairs, image = captions.tile_pairs(samples.OSM_TILES_DIR / "w221548378_US_21")
    whole = [c for w, c in pairs if w is None]
    assert len(whole) == 1
    crops = {c: w for w, c in pairs if w is not None}
    green = next(w for c, w in crops.items() if c.startswith("a satellite image of grass (green)"))
    assert green[2] - green[0] == green[3] - green[1] >= 64  # a square window, at least min_window
    assert captions.phrase("highway:path;tracktype:grade1;golf:cartpath;name:Golf Cart path") == "path (cartpath)"
    assert captions.phrase("building:building") == "building"


def _bad_table(tmp):
    src = samples.DOFA_CLIP_DIR / "landsat" / "l8_0.tif"
    shutil.copy(src, tmp / "l8.tif")
    shutil.copy(samples.OSM_TILES_DIR / "a1085095888_S2_20" / "a1085095888_S2_20.jpg", tmp / "ok.jpg")
    (tmp / "broken.png").write_text("not a png")
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp / "tiny.png")
    rows = [("ok.jpg", "a glacier", "", "a"), ("l8.tif", "landsat", "landsat8_oli", "b"),
            ("l8.tif", "too few wavelengths", "[0.4, 0.5]", "b"), ("l8.tif", "unknown sensor", "sentinel9", "b"),
            ("broken.png", "broken", "", "a"), ("missing.jpg", "missing", "", "a"), ("ok.jpg", "", "", "a"),
            ("tiny.png", "tiny", "", "a"),
            # issue 28, item 4: wavelengths not finite, in nanometres, not positive
            ("ok.jpg", "nan", "[NaN, 0.56, 0.49]", "a"), ("ok.jpg", "nm", "[665, 560, 490]", "a"),
            ("ok.jpg", "negative", "[-0.665, -0.56, 0.0]", "a")]
    with open(tmp / "pairs.csv", "w") as f:
        f.write("image,caption,wavelengths,source\n")
        for r in rows:
            f.write(",".join(f'"{v}"' for v in r) + "\n")
    return tmp / "pairs.csv"


def test_bad_rows_are_reported_and_skipped(tmp_path):
    table = _bad_table(tmp_path)
    m = dp.run_local([table], tmp_path / "out", progress=False)
    # every table row counted (issue 28, item 11): 11 rows, 2 written, 9 dropped
    assert (m["num_records"], m["num_pairs"], m["num_dropped"]) == (2, 11, 9)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    reasons = " | ".join(e["reason"] for e in errors)
    for expected in ("unknown sensor", "2 wavelengths for 7 bands", "unreadable image", "empty caption",
                     "smaller than min_size", "not finite", "look like nanometres", "not positive"):
        assert expected in reasons, reasons
    unknown = next(e for e in errors if "unknown sensor" in e["reason"])
    assert unknown["tile_id"] == "b/3" and unknown["detail"] == "row 5: l8.tif"  # its row, not another image
    assert sum("No such file" in e["reason"] or "unreadable" in e["reason"] for e in errors) == 2
    assert all(e["file"] for e in errors) and all(e["detail"].startswith("row ") for e in errors)
    recs = records(tmp_path / "out")
    assert sorted(len(r["wavelengths"]) for r in recs) == [3, 7]


def test_beam_runner_writes_the_same_records(tmp_path, pairs):
    pytest.importorskip("apache_beam")
    sources = [samples.OSM_TILES_DIR, samples.DOFA_CLIP_DIR / "multispectral.csv"]
    m = dp.run_beam(sources, tmp_path / "beam")
    local = records(pairs)
    beam = records(tmp_path / "beam")
    assert [r["pair_id"] for r in beam] == [r["pair_id"] for r in local]
    assert all(np.array_equal(dp.decode_image(a), dp.decode_image(b)) and a["caption"] == b["caption"]
               for a, b in zip(local, beam))
    assert m["groups"] == json.loads((pairs / "manifest.json").read_text())["groups"]


def _pipeline_cfg(**kw):
    base = pipeline.DOFACLIPPipelineConfig(batch_size=4, image_size=32, context_length=16, tokenizer="clip_bpe",
                                           band_buckets=(3, 8, 16))
    return dataclasses.replace(base, **kw)


def test_batches_are_modality_homogeneous_mixed_by_weight_and_deterministic(pairs):
    m = json.loads((pairs / "manifest.json").read_text())
    paths = shards.manifest_shards(pairs, m)
    cfg = _pipeline_cfg(source_weights=(("osm_tiles", 1.0), ("landsat8", 4.0), ("sentinel2", 0.0)))
    it = iter(pipeline.make_dataset(paths, m, cfg))
    batches = [next(it) for _ in range(24)]
    seen = {}
    for b in batches:
        assert (b["wavelengths"] == b["wavelengths"][0]).all()  # one band set per batch
        c = int(b["band_valid"][0].sum())
        seen[c] = seen.get(c, 0) + 1
        assert b["image"].shape == (4, 32, 32, {3: 3, 7: 8}[c])
        assert not b["image"][..., c:].any()  # padding bands are zero
    # landsat weighs 4 × 6 pairs against 1 × 25 OSM pairs; Sentinel-2 weighs 0: never drawn
    assert set(seen) == {3, 7} and seen[7] > seen[3] / 2
    again = iter(pipeline.make_dataset(paths, m, cfg))
    for b in batches[:6]:
        np.testing.assert_array_equal(next(again)["image"], b["image"])


def test_on_device_crops_give_the_host_paths_pixels(pairs):
    """data.augment_on_device (issue 27): the host sends the decoded image on a canvas with the drawn box; the step's
    crop + resize + normalise equals the host path's pixels within Pillow's resampling (≤ 8 levels, ≤ 0.5 on
    average), padded bands zero, for RGB, Landsat and Sentinel-2 pairs; the abstract batch describes the samples."""
    import jax.numpy as jnp

    from geolink_jax.dofa_clip import family as dofa_family

    manifest = json.loads((pairs / "manifest.json").read_text())
    source = shards.ShardSource(shards.manifest_shards(pairs, manifest))
    cfg = pipeline.DOFACLIPPipelineConfig(batch_size=1, image_size=64, context_length=16, tokenizer="clip_bpe",
                                          band_buckets=(3, 8, 16))
    dev = dataclasses.replace(cfg, canvas=dofa_family.canvas(manifest))
    bands = set()
    for i in range(0, len(source), 4):
        host = pipeline.PairToSample(cfg).random_map(source[i], np.random.default_rng(i))
        sample = pipeline.PairToSample(dev).random_map(source[i], np.random.default_rng(i))
        assert sample["image"].dtype == np.uint8 and sample["image"].shape[:2] == dev.canvas
        x = np.asarray(pipeline.step_inputs({k: jnp.asarray(v)[None] for k, v in sample.items()}, 64)["image"][0])
        levels = np.abs(x - host["image"]) * 127.5
        assert levels.max() <= 8 and levels.mean() <= 0.5, (i, levels.max(), levels.mean())
        assert (x[..., ~host["band_valid"]] == 0).all()
        bands.add(int(host["band_valid"].sum()))
    assert bands == {3, 7, 13}
    model_cfg = dataclasses.replace(dofa_family.FAMILY.config_cls(), band_buckets=(3, 8, 16))
    want = dofa_family.abstract_batch(model_cfg, 1, manifest, dict(augment_on_device=True))
    assert want["image"].shape[1:3] == dev.canvas and want["image"].dtype == np.uint8
    assert set(want) - {"image"} >= {"crop", "image_hw"} and set(sample) == set(want)


def test_compilations_are_bounded_by_the_band_buckets():
    """Batches of 2, 3, 4, 7, 9 and 13 bands, padded to buckets (4, 8, 16): the jitted loss traces 3 times."""
    from flax import nnx
    from test_dofa_clip import _tiny_batch, _tiny_cfg

    from geolink_jax import family as family_lib

    cfg = _tiny_cfg(teachers=())
    model = family_lib.get_family("dofa_clip").build(cfg, nnx.Rngs(0))
    traces = []

    @jax.jit
    def step(m, b):
        traces.append(b["image"].shape[-1])
        return m.loss(b)[0]

    for c in (2, 3, 4, 7, 9, 13, 3, 13):
        assert np.isfinite(float(step(model, _tiny_batch(cfg, c))))
    assert sorted(traces) == [4, 8, 16]


def test_cached_teacher_features_round_trip_through_the_shards(pairs, tmp_path):
    """The cache job writes each record's teacher tokens (float16) equal to the teacher run on the record's
    teacher input; the pipeline carries them into the batch unchanged, uncropped."""
    out = teachers.cache_features(pairs, tmp_path / "feats", [TINY_TEACHER], progress=False)
    assert out["teachers"]["sig"]["shape"] == [16, 16]
    recs = records(tmp_path / "feats")
    run = teachers.runner(TINY_TEACHER)
    for r in recs[:3] + recs[-3:]:
        want = run(teachers.teacher_input(r, TINY_TEACHER, "nearest_rgb")[None])[0].astype(np.float16)
        np.testing.assert_array_equal(r["teacher_sig"], want)
    m = json.loads((tmp_path / "feats" / "manifest.json").read_text())
    cfg = _pipeline_cfg(teachers=("sig",), train=False, source_weights=(("landsat8", 0.0), ("sentinel2", 0.0)))
    batch = next(iter(pipeline.make_dataset(shards.manifest_shards(tmp_path / "feats", m), m, cfg)))
    np.testing.assert_array_equal(batch["teacher_sig"], np.stack([r["teacher_sig"] for r in recs[:4]]))
    # shards without a teacher's features are refused by name
    bare = iter(pipeline.make_dataset(shards.manifest_shards(pairs, json.loads((pairs / "manifest.json")
                                                                                .read_text())), m, cfg))
    with pytest.raises(shards.DataError, match="no cached features of teacher"):
        next(bare)


def test_a_timm_teacher_is_cached_without_its_prefix_tokens(pairs, tmp_path):
    """A timm teacher (DINOv2 with registers: 1 class + 4 register tokens) with weights from a file, run by the
    cache job in torch: the cached tokens are its patch tokens for the record's 3 sampled bands (float16)."""
    timm = pytest.importorskip("timm")
    import torch
    from safetensors.torch import save_file

    name = "vit_small_patch14_reg4_dinov2"
    ref = timm.create_model(name, pretrained=False, num_classes=0, img_size=28).eval()
    assert ref.num_prefix_tokens == 5
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "dino.safetensors"))
    t = maka.TeacherConfig("dino", 4, 384, image_size=28, timm=name, weights=str(tmp_path / "dino.safetensors"))
    teachers.cache_features(pairs, tmp_path / "feats", [t], progress=False)
    rec = records(tmp_path / "feats")[-1]  # a Sentinel-2 pair: bands nearest 665/560/490 nm
    x = teachers.teacher_input(rec, t, "nearest_rgb")[None]
    with torch.no_grad():
        want = ref.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))[:, 5:].numpy()[0]
    assert rec["teacher_dino"].shape == want.shape == (4, 384)
    np.testing.assert_allclose(rec["teacher_dino"].astype(np.float32), want, rtol=2e-3, atol=2e-3)


def test_zero_shot_scores_and_recall():
    labels = np.array([0, 1, 2, 1])
    logits = np.array([[3, 1, 0], [0, 1, 2], [0, 1, 5], [1, 3, 0]], np.float32)  # sample 1: true class 2nd
    s = zeroshot.scores(logits, labels, ("a", "b", "c"), ks=(1, 2))
    assert s["top1"] == 0.75 and s["top2"] == 1.0 and s["per_class_top1"] == {"a": 1.0, "b": 0.5, "c": 1.0}
    sim = np.array([[0.9, 0.1, 0.2], [0.3, 0.2, 0.5], [0.1, 0.8, 0.7]])  # ranks of the positives: 0, 2, 1
    assert zeroshot.recall_at_k(sim, (1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    ims, labs, names = zeroshot.ufz_crops(samples.UFZ_DIR)
    assert ims.shape == (24, 112, 112, 3) and len(set(labs)) >= 4 and names[0].endswith("@0,0")


@pytest.mark.slow
def test_cli_preprocess_teachers_pretrain_zeroshot_embed(tmp_path, capsys):
    """The commands end to end on a tiny config: preprocess the bundled pairs, cache a teacher, pretrain a few
    steps (3 band sets), zero-shot on UFZ + retrieval on the pairs, embed; user mistakes are one line each."""
    data = tmp_path / "pairs"
    assert cli.main(["preprocess", "--family", "dofa_clip", "--out", str(data), "--no-progress"]) == 0
    assert "landsat8 7 bands: 6" in capsys.readouterr().out
    cfg = pathlib.Path(__file__).parent / "data" / "dofa_clip_tiny.py"
    assert cli.main(["dofa-teachers", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "feats"),
                     "--no-progress"]) == 0
    work = tmp_path / "run"
    assert cli.main(["pretrain", f"--config={cfg}", "--workdir", str(work), "--no-progress",
                     f"--config.data.path={tmp_path / 'feats'}"]) == 0
    rows = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6 and np.isfinite(rows[-1]["loss"]) and "maka" in rows[-1]
    assert (work / "similarity.png").exists()
    capsys.readouterr()
    assert cli.main(["zeroshot", "--params", str(work), "--pairs", str(data), "--out", str(tmp_path / "z.json")]) == 0
    report = json.loads((tmp_path / "z.json").read_text())
    assert report["classification"]["count"] == 24 and 0 <= report["classification"]["top1"] <= 1
    assert report["retrieval"]["count"] > 30 and report["retrieval"]["image_to_text"]["10"] >= 10 / 37 - 1e-9
    # a merge of the run with itself (a uniform soup) is the run, bit for bit, and zero-shot takes it as it is
    assert cli.main(["merge", "--models", str(work), str(work), "--out", str(tmp_path / "soup")]) == 0
    assert cli.main(["zeroshot", "--params", str(tmp_path / "soup"), "--pairs", str(data), "--out",
                     str(tmp_path / "zs.json")]) == 0
    assert json.loads((tmp_path / "zs.json").read_text())["classification"] == report["classification"]
    (tmp_path / "texts.txt").write_text("a satellite image of glacier\nfarmland\n")
    assert cli.main(["embed", "--params", str(work), "--tiles", str(data), "--texts", str(tmp_path / "texts.txt"),
                     "--out", str(tmp_path / "e.parquet")]) == 0
    import pandas as pd

    frame = pd.read_parquet(tmp_path / "e.parquet")
    assert (frame.kind == "text").sum() == 2 and len(frame.image.dropna().iloc[0]) == 32
    # weights out and back in: safetensors and torch .bin, the DOFA-CLIP layout, every tensor equal
    from geolink_jax.convert import params_store

    mine = params_store.load_params(work).params
    for suffix in ("safetensors", "bin"):
        f = tmp_path / f"w.{suffix}"
        assert cli.main(["convert", "export", "--src", str(work), "--out", str(f)]) == 0
        assert cli.main(["convert", "import", "--src", str(f), "--out", str(tmp_path / f"imp_{suffix}"),
                         "--family", "dofa_clip", "--format", "dofa_clip"]) == 0
        back = params_store.load_params(tmp_path / f"imp_{suffix}").params
        assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), mine, back))
    import torch

    class Code:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"logit_scale": torch.zeros(()), "x": Code()}, tmp_path / "evil.pt")
    capsys.readouterr()
    assert cli.main(["convert", "import", "--src", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "evil"),
                     "--family", "dofa_clip"]) == 1
    out = capsys.readouterr()
    assert "executed" not in out.out and "refused" in out.err and len(out.err.strip().splitlines()) == 1
    # mistakes: one line, no traceback
    assert cli.main(["preprocess", "--family", "dofa_clip", "--pairs", str(tmp_path / "nope.csv"),
                     "--out", str(tmp_path / "x")]) == 2
    assert cli.main(["zeroshot", "--params", str(work), "--tiles", str(tmp_path), "--out",
                     str(tmp_path / "z2.json")]) == 1
    assert cli.main(["pretrain", f"--config={cfg}", "--workdir", str(tmp_path / "run2"), "--no-progress",
                     f"--config.data.path={data}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [e.split(":")[0] for e in err] == ["error"] * 3, err
    assert "no such table" in err[0] and "UFZ-layout" in err[1] and "dofa-teachers" in err[2]
