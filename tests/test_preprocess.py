"""The preprocessing job: records and shards round trip, Beam equals local, TFDS exposes the same data, every input
form, and every bad-input case is reported with file and reason while the job goes on."""
import json
import shutil

import geopandas as gpd
import numpy as np
import pytest
from conftest import load_sample_layers
from shapely.geometry import Point, Polygon

from geolink_jax import samples
from geolink_jax.data import record_format, shards
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES, osm_graph, tag_encoders
from geolink_jax.tiles import job as preprocess
from geolink_jax.tiles import sources as tile_sources

CFG = preprocess.PreprocessConfig(encoder="hash:16", tiles_per_shard=2)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    specs = tile_sources.discover_tiles(samples.OSM_TILES_DIR)
    manifest = preprocess.run_local(specs, out, CFG, workers=2, progress=False)
    return out, manifest


def test_local_run_writes_all_bundled_tiles(local_run):
    out, manifest = local_run
    assert manifest["num_tiles"] == manifest["num_records"] == 5 and manifest["num_failed_tiles"] == 0
    assert [s["path"] for s in manifest["shards"]] == [shards.shard_name(k, 3) for k in range(3)]
    assert [s["num_records"] for s in manifest["shards"]] == [2, 2, 1]  # contiguous: tile i → i·3//5
    records = preprocess.read_records(out)
    assert [r["tile_id"] for r in records] == samples.osm_tile_names()
    assert manifest["feature_dim"] == 16 and manifest["encoder"]["spec"] == "hash:16"
    assert shards.writer_options(out / manifest["shards"][0]["path"]).startswith("group_size:1")
    # manifest percentiles are those of the records
    for t in NODE_TYPES:
        counts = [len(r[f"labels_{t}"]) for r in records]
        assert manifest["node_counts"][t]["max"] == max(counts)
        assert manifest["node_counts"][t]["p50"] == np.percentile(counts, 50)
    for r in RELATION_NAMES:
        assert manifest["edge_counts"][r]["max"] == max(rec[f"edge_index_{r}"].shape[1] for rec in records)


@pytest.mark.parametrize("name", samples.osm_tile_names())
def test_record_holds_exactly_the_tile_graph(local_run, name):
    out, _ = local_run
    rec = {r["tile_id"]: r for r in preprocess.read_records(out)}[name]
    layers, bbox = load_sample_layers(name)
    graph, _ = osm_graph.build_tile_graph(layers, bbox, tag_encoders.make_encoder("hash:16"), name, seed=CFG.seed)
    for t in NODE_TYPES:
        np.testing.assert_array_equal(rec[f"x_{t}"], graph.features[t])
        np.testing.assert_array_equal(rec[f"pos_{t}"], graph.positions[t])
        assert rec[f"labels_{t}"] == graph.labels[t]
    for r in RELATION_NAMES:
        np.testing.assert_array_equal(rec[f"edge_index_{r}"], graph.edge_index[r])
        np.testing.assert_array_equal(rec[f"edge_attr_{r}"], graph.edge_attr[r])
    image = record_format.decode_image(rec)
    assert image.shape[:2] == tuple(rec["image_size"])
    with open(samples.OSM_TILES_DIR / name / f"{name}.jpg", "rb") as f:
        assert rec["image"] == f.read()


def test_record_codec_round_trip_and_version_check():
    rec = {"tile_id": "t", "x_point": np.arange(6, dtype=np.float32).reshape(2, 3),
           "edge_index_point_to_point": np.zeros((2, 0), np.int32), "labels_point": ["a:b", ""],
           "bbox_lonlat": np.array([1.5, 2.5, 3.5, 4.5]), "meta": {"k": [1, 2]}}
    back = record_format.decode(record_format.encode(rec))
    for k, v in rec.items():
        if isinstance(v, np.ndarray):
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            np.testing.assert_array_equal(back[k], v)
        else:
            assert back[k] == v
    import msgpack

    with pytest.raises(record_format.RecordFormatError, match="version 2"):
        record_format.decode(msgpack.packb({"format": record_format.FORMAT, "version": 2}))
    with pytest.raises(record_format.RecordFormatError):
        record_format.decode(b"\x00garbage")


def test_grain_reads_the_shards(local_run):
    import grain

    out, manifest = local_run
    source = grain.sources.ArrayRecordDataSource([str(out / s["path"]) for s in manifest["shards"]])
    assert len(source) == 5
    assert record_format.decode(source[3])["tile_id"] == samples.osm_tile_names()[3]


def test_beam_direct_runner_equals_local_run(local_run, tmp_path):
    out, manifest = local_run
    specs = tile_sources.discover_tiles(samples.OSM_TILES_DIR)
    beam_manifest = preprocess.run_beam(specs, tmp_path, CFG)
    strip = lambda m: {k: v for k, v in m.items() if k != "runner"}  # noqa: E731
    assert strip(json.loads(json.dumps(manifest))) == strip(beam_manifest)
    assert beam_manifest["runner"]["name"] == "beam"
    for s in manifest["shards"]:
        assert (out / s["path"]).read_bytes() == (tmp_path / s["path"]).read_bytes()
    assert (out / "errors.jsonl").read_text() == (tmp_path / "errors.jsonl").read_text()


def test_tfds_builder_exposes_the_same_data(local_run, tmp_path):
    import tensorflow_datasets as tfds

    from data_pipelines import tfds_geolink_tiles

    out, _ = local_run
    builder = tfds_geolink_tiles.GeolinkTiles(config="features_16", data_dir=str(tmp_path),
                                              file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(out)))
    source = tfds.data_source("geolink_tiles/features_16", data_dir=str(tmp_path))["train"]
    records = {r["tile_id"]: r for r in preprocess.read_records(out)}
    assert len(source) == len(records)
    for i in range(len(source)):
        ex = source[i]
        rec = records[ex["tile_id"].decode()]
        for k, v in ex.items():
            if k.startswith("labels_"):
                assert [x.decode() for x in v] == rec[k]
            elif isinstance(v, bytes):
                assert v == (rec[k] if isinstance(rec[k], bytes) else rec[k].encode())
            else:
                assert v.dtype == rec[k].dtype, k
                np.testing.assert_array_equal(v, rec[k], err_msg=k)
    wrong = tfds_geolink_tiles.GeolinkTiles(config="features_32", data_dir=str(tmp_path / "w"),
                                            file_format="array_record")
    with pytest.raises(ValueError, match="feature_dim 16"):
        wrong.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(out)))


def test_ufz_layout_keeps_official_graphs_and_labels(tmp_path):
    manifest = preprocess.run_local(tile_sources.discover_tiles(samples.UFZ_DIR), tmp_path, CFG, workers=1,
                                    progress=False)
    assert manifest["num_records"] == 6 and manifest["feature_dim"] == 512
    for rec in preprocess.read_records(tmp_path):
        with np.load(samples.UFZ_DIR / "graph" / f"{rec['tile_id']}.npz") as d:
            np.testing.assert_array_equal(rec["x_polygon"], d["x_polygon"][:, :512])
            np.testing.assert_array_equal(rec["pos_line"], d["x_line"][:, 512:])
            np.testing.assert_array_equal(rec["edge_index_line_to_polygon"], d["edge_index_line_to_polygon"])
        assert rec["label_image"] == (samples.UFZ_DIR / "label" / f"{rec['tile_id']}.png").read_bytes()


# --- other input forms --------------------------------------------------------------------------------------------

def write_jpeg(path, width, height):
    from PIL import Image

    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path, format="JPEG")


def test_geotiff_in_projected_crs_with_lonlat_vectors(tmp_path):
    import pyproj
    import rasterio
    from rasterio.transform import from_bounds

    west, south, east, north = 385000.0, 6671000.0, 385400.0, 6671200.0  # UTM 35N, Helsinki
    with rasterio.open(tmp_path / "t.tif", "w", driver="GTiff", width=200, height=100, count=3, dtype="uint8",
                       crs="EPSG:32635", transform=from_bounds(west, south, east, north, 200, 100)) as dst:
        dst.write(np.random.default_rng(0).integers(0, 255, (3, 100, 200), dtype=np.uint8))
    to_ll = pyproj.Transformer.from_crs("EPSG:32635", "EPSG:4326", always_xy=True)
    pts = [(385100.0, 6671150.0), (385300.0, 6671050.0)]
    gpd.GeoDataFrame({"label": ["amenity:bench", "amenity:cafe"]},
                     geometry=[Point(*to_ll.transform(*p)) for p in pts], crs="EPSG:4326").to_file(
        tmp_path / "t_point.geojson")
    manifest = preprocess.run_local(tile_sources.discover_tiles(tmp_path), tmp_path / "out", CFG, workers=1,
                                    progress=False)
    assert manifest["num_records"] == 1, (tmp_path / "out" / "errors.jsonl").read_text()
    rec = preprocess.read_records(tmp_path / "out")[0]
    np.testing.assert_allclose(rec["pos_point"], [[0.25, 0.25], [0.75, 0.75]], atol=1e-5)
    assert rec["crs"] == "EPSG:32635" and rec["image_format"] == "png"
    assert record_format.decode_image(rec).shape == (100, 200, 3)
    ll = to_ll.transform_bounds(west, south, east, north)
    np.testing.assert_allclose(rec["bbox_lonlat"], ll)


def test_pbf_features_for_a_tile(tmp_path):
    """Two tiles in two worker processes, each parsing the PBF once (as a real run does; in this process the parse
    ran 20-60x slower in some test orders, a GIL contention inside pyosmium's iterators)."""
    bbox = (24.940, 60.166, 24.944, 60.168)
    for name in ("hel", "hel2"):
        write_jpeg(tmp_path / f"{name}.jpg", 224, int(224 * (0.002 / (0.004 * np.cos(np.radians(60.167))))))
        (tmp_path / f"{name}.json").write_text(json.dumps({"bbox_west_south_east_north": bbox}))
    cfg = preprocess.PreprocessConfig(encoder="hash:16", pbf=str(samples.helsinki_pbf()))
    manifest = preprocess.run_local(tile_sources.discover_tiles(tmp_path), tmp_path / "out", cfg, workers=2,
                                    progress=False)
    assert manifest["num_records"] == 2, (tmp_path / "out" / "errors.jsonl").read_text()
    rec, again = preprocess.read_records(tmp_path / "out")
    # the same features, edges and line/point positions (polygon sample points are seeded by the tile id)
    same = ("x_", "edge_index_", "pos_line", "pos_point")
    assert all(np.array_equal(rec[k], again[k]) for k in rec if k.startswith(same))
    assert min(len(rec[f"labels_{t}"]) for t in NODE_TYPES) > 5
    assert any("highway:" in lbl for lbl in rec["labels_line"])
    assert all((rec[f"pos_{t}"] >= -1e-6).all() and (rec[f"pos_{t}"] <= 1 + 1e-6).all() for t in ("line", "point"))


def test_mixed_vector_file_is_split_by_geometry_type(tmp_path):
    src = samples.OSM_TILES_DIR / "a702502933_US_21"
    shutil.copy(src / "a702502933_US_21.jpg", tmp_path / "mix.jpg")
    shutil.copy(src / "a702502933_US_21.json", tmp_path / "mix.json")
    frames = [gpd.read_file(p) for p in sorted(src.glob("*.geojson"))]
    gpd.GeoDataFrame(pd_concat(frames), crs="EPSG:4326").to_file(tmp_path / "mix.gpkg")
    preprocess.run_local(tile_sources.discover_tiles(tmp_path), tmp_path / "o", CFG, workers=1, progress=False)
    rec = preprocess.read_records(tmp_path / "o")[0]
    assert [len(rec[f"labels_{t}"]) for t in NODE_TYPES] == [36, 6, 9]


def pd_concat(frames):
    import pandas as pd

    return pd.concat(frames, ignore_index=True)


# --- bad input ----------------------------------------------------------------------------------------------------

def make_tile(root, name="a702502933_US_21", new=None):
    """Copy a bundled tile into root/<new> (renamed) and return its folder and stem."""
    new = new or name
    folder = root / new
    folder.mkdir(parents=True)
    for f in (samples.OSM_TILES_DIR / name).iterdir():
        shutil.copy(f, folder / f.name.replace(name, new))
    return folder, new


def run(root, cfg=CFG, **kw):
    out = root.parent / f"{root.name}_out"
    manifest = preprocess.run_local(tile_sources.discover_tiles(root), out, cfg, workers=1, progress=False, **kw)
    problems = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    return manifest, problems, out


def test_bad_inputs_are_reported_and_the_job_goes_on(tmp_path):
    root = tmp_path / "tiles"
    make_tile(root, new="good")
    # unreadable image
    folder, stem = make_tile(root, new="corrupt_image")
    (folder / f"{stem}.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    # bbox that does not match the raster (aspect 4x off)
    folder, stem = make_tile(root, new="bad_bbox")
    meta = json.loads((folder / f"{stem}.json").read_text())
    w, s, e, n = meta["bbox_west_south_east_north"]
    meta["bbox_west_south_east_north"] = [w, s, w + 4 * (e - w), n]
    (folder / f"{stem}.json").write_text(json.dumps(meta))
    # inverted bbox
    folder, stem = make_tile(root, new="inverted_bbox")
    meta["bbox_west_south_east_north"] = [e, s, w, n]
    (folder / f"{stem}.json").write_text(json.dumps(meta))
    # unknown CRS: a shapefile without .prj
    folder, stem = make_tile(root, new="no_crs")
    gdf = gpd.read_file(folder / f"{stem}_point.geojson")
    (folder / f"{stem}_point.geojson").unlink()
    gdf.set_crs(None, allow_override=True).to_file(folder / f"{stem}_point.shp")
    for f in folder.glob("*.prj"):
        f.unlink()
    # over the feature cap
    folder, stem = make_tile(root, new="too_many")
    # invalid (self-intersecting) polygon and a NaN point
    folder, stem = make_tile(root, new="invalid_geoms")
    poly = gpd.read_file(folder / f"{stem}_polygon.geojson")
    x0, y0, x1, y1 = poly.total_bounds
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    poly = gpd.GeoDataFrame({"label": list(poly["label"]) + ["landuse:grass"]},
                            geometry=list(poly.geometry) + [bowtie], crs="EPSG:4326")
    poly.to_file(folder / f"{stem}_polygon.gpkg")
    (folder / f"{stem}_polygon.geojson").unlink()
    pts = gpd.read_file(folder / f"{stem}_point.geojson")
    pts = gpd.GeoDataFrame({"label": list(pts["label"]) + ["amenity:bench"]},
                           geometry=list(pts.geometry) + [Point(x0, float("nan"))], crs="EPSG:4326")
    pts.to_file(folder / f"{stem}_point.gpkg")
    (folder / f"{stem}_point.geojson").unlink()
    # empty layer and missing layers
    folder, stem = make_tile(root, new="empty_layer")
    gpd.GeoDataFrame({"label": []}, geometry=[], crs="EPSG:4326").to_file(folder / f"{stem}_point.gpkg")
    (folder / f"{stem}_point.geojson").unlink()
    folder, stem = make_tile(root, new="image_only")
    for f in folder.glob("*.geojson"):
        f.unlink()

    cfg = preprocess.PreprocessConfig(encoder="hash:16", max_features=60)
    # too_many has 51 features; lower the cap for it alone by giving it more features
    extra = gpd.read_file(root / "too_many" / "too_many_polygon.geojson")
    pd_concat([extra, extra]).to_file(root / "too_many" / "too_many_polygon.geojson")
    manifest, problems, out = run(root, cfg)

    by_tile = {}
    for p in problems:
        by_tile.setdefault(p["tile_id"], []).append(p)
    errors = {t: [p for p in ps if p["severity"] == "error"] for t, ps in by_tile.items()}
    assert errors["corrupt_image"][0]["reason"] == "unreadable image"
    assert errors["corrupt_image"][0]["file"].endswith("corrupt_image.jpg")
    assert "does not match the raster" in errors["bad_bbox"][0]["reason"]
    assert errors["bad_bbox"][0]["file"].endswith("bad_bbox.json")
    assert "inverted" in errors["inverted_bbox"][0]["reason"]
    assert "unknown CRS" in errors["no_crs"][0]["reason"] and errors["no_crs"][0]["file"].endswith(".shp")
    assert "over the cap of 60" in errors["too_many"][0]["reason"]
    # the file that makes the tile big is named, with its count (not the first vector file, here the _line one)
    assert errors["too_many"][0]["file"].endswith("too_many_polygon.geojson")
    assert errors["too_many"][0]["detail"].endswith("raw features from this file")
    warnings = [p for p in by_tile["invalid_geoms"] if p["severity"] == "warning"]
    assert {p["reason"] for p in warnings} == {"invalid geometry repaired with make_valid",
                                               "NaN coordinates: feature dropped"}
    assert any(p["file"].endswith("_polygon.gpkg") and "Self-intersection" in p["detail"] for p in warnings)
    assert [p["reason"] for p in by_tile["empty_layer"]] == ["empty layer"]
    assert [p["reason"] for p in by_tile["image_only"]] == ["no OSM vector files: image-only tile"]
    assert "good" not in by_tile

    written = {r["tile_id"]: r for r in preprocess.read_records(out)}
    assert set(written) == {"good", "invalid_geoms", "empty_layer", "image_only"}
    assert manifest["num_failed_tiles"] == 5 and manifest["num_image_only"] == 1
    assert manifest["problems"] == {"error": 5, "warning": 2, "note": 2}
    assert len(written["invalid_geoms"]["labels_polygon"]) > len(written["good"]["labels_polygon"])  # repaired kept
    assert len(written["invalid_geoms"]["labels_point"]) == len(written["good"]["labels_point"])    # NaN dropped
    assert len(written["empty_layer"]["labels_point"]) == 0
    assert all(written["image_only"][f"x_{t}"].shape == (0, 16) for t in NODE_TYPES)
    assert all(written["image_only"][f"edge_index_{r}"].shape == (2, 0) for r in RELATION_NAMES)


def test_skip_invalid_and_strict(tmp_path):
    root = tmp_path / "tiles"
    folder, stem = make_tile(root, new="invalid")
    poly = gpd.read_file(folder / f"{stem}_polygon.geojson")
    x0, y0, x1, y1 = poly.total_bounds
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    gpd.GeoDataFrame({"label": ["landuse:grass"]}, geometry=[bowtie], crs="EPSG:4326").to_file(
        folder / f"{stem}_polygon.geojson")
    manifest, problems, out = run(root, preprocess.PreprocessConfig(encoder="hash:16", invalid_geometry="skip"))
    assert [p["reason"] for p in problems] == ["invalid geometry skipped"]
    assert preprocess.read_records(out)[0]["x_polygon"].shape == (0, 16)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(preprocess.PreprocessError, match="exists and is not empty: pass --overwrite"):
        run(root, strict=True)
    # a failing --strict rerun over the output leaves it exactly as it was (staged, replaced only when complete)
    with pytest.raises(preprocess.PreprocessError, match="invalid geometry repaired"):
        run(root, preprocess.PreprocessConfig(encoder="hash:64"), strict=True, overwrite=True)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    assert not [p for p in out.parent.iterdir() if ".staging-" in p.name]
    # and a successful one replaces it whole
    manifest, _, _ = run(root, preprocess.PreprocessConfig(encoder="hash:64"), overwrite=True)
    assert manifest["feature_dim"] == 64 and preprocess.read_records(out)[0]["x_polygon"].shape[1] == 64


def test_strict_beam_run_stops(tmp_path):
    root = tmp_path / "tiles"
    folder, stem = make_tile(root, new="corrupt")
    (folder / f"{stem}.jpg").write_bytes(b"not an image")
    with pytest.raises(preprocess.PreprocessError, match="unreadable image"):
        preprocess.run_beam(tile_sources.discover_tiles(root), tmp_path / "out", CFG, strict=True)


def test_cli_preprocess_prints_summary(tmp_path, capsys):
    from geolink_jax import cli

    assert cli.main(["preprocess", "--out", str(tmp_path), "--encoder", "hash:8", "--workers", "1",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tiles: 5  written: 5  failed: 0" in out and "polygon_to_polygon" in out
    assert json.loads((tmp_path / "manifest.json").read_text())["feature_dim"] == 8


def test_vectors_without_an_image_and_features_outside_the_tile_are_reported(tmp_path):
    root = tmp_path / "tiles"
    folder, stem = make_tile(root, new="kept")
    orphan, orphan_stem = make_tile(root, new="orphan")
    for f in orphan.iterdir():
        if f.suffix != ".geojson":
            f.unlink()  # the vectors stay, the image (and its sidecar) are gone
    bbox = json.loads((folder / f"{stem}.json").read_text())["bbox_west_south_east_north"]
    far = Point(bbox[2] + 1.0, bbox[3] + 1.0)  # a degree beyond the tile's corner
    gpd.GeoDataFrame({"label": ["amenity:bench"]}, geometry=[far], crs="EPSG:4326").to_file(
        folder / f"{stem}_point.geojson")
    manifest, problems, _ = run(root)
    assert manifest["num_tiles"] == 2 and manifest["num_records"] == 1
    (err,) = [p for p in problems if p["tile_id"] == orphan_stem]
    assert err["severity"] == "error" and err["reason"].startswith("vector files without an image tile")
    assert err["file"].endswith(".geojson")
    (note,) = [p for p in problems if p["reason"] == "features outside the tile dropped"]
    assert note["file"].endswith(f"{stem}_point.geojson") and note["detail"] == "1 feature(s)"


def test_a_non_utf8_label_is_decoded_with_replacement_and_reported(tmp_path):
    root = tmp_path / "tiles"
    folder, stem = make_tile(root, new="latin")
    w, s, e, n = json.loads((folder / f"{stem}.json").read_text())["bbox_west_south_east_north"]
    text = ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"label": '
            '"name:Caf@@;cuisine:cr\u00e9pe"}, "geometry": {"type": "Point", "coordinates": [%r, %r]}}]}'
            % ((w + e) / 2, (s + n) / 2))
    (folder / f"{stem}_point.geojson").write_bytes(text.encode("utf-8").replace(b"@@", b"\xe9"))  # one bad byte
    manifest, problems, out = run(root, preprocess.PreprocessConfig(encoder="hash:16"))
    assert manifest["num_records"] == 1  # the tile is kept
    (warn,) = [p for p in problems if "not valid UTF-8" in p["reason"]]
    assert warn["severity"] == "warning" and warn["file"].endswith(f"{stem}_point.geojson")
    geoms, labels, _, _ = tile_sources.read_vectors([str(folder / f"{stem}_point.geojson")], "EPSG:4326")
    assert labels == ["name:Caf\ufffd;cuisine:cr\u00e9pe"]  # the valid UTF-8 'é' is kept


def test_a_missing_ufz_image_is_reported_with_the_names_looked_for(tmp_path):
    root = tmp_path / "ufz"
    shutil.copytree(samples.UFZ_DIR, root)
    name = samples.ufz_tile_names()[0]
    for f in (root / "img").glob(f"{name}.*"):
        f.unlink()
    manifest, problems, _ = run(root)
    (err,) = [p for p in problems if p["tile_id"] == name]
    assert err["reason"] == "image file missing" and err["file"].endswith(f"{name}.{{jpg,jpeg,png,tif,tiff}}")
    assert manifest["num_records"] == 5


def _osm_xml(path, ways):
    """A small .osm file: each way {tags, coords (lon, lat)} with its own nodes (closed when first == last)."""
    nodes, xml_ways, nid = [], [], 1
    for wid, (tags, coords) in enumerate(ways, start=1):
        refs = []
        for lon, lat in coords:
            if refs and (lon, lat) == coords[0]:
                refs.append(refs[0])  # a closed way repeats its first node
                continue
            nodes.append(f'<node id="{nid}" version="1" lat="{lat}" lon="{lon}"/>')
            refs.append(nid)
            nid += 1
        nds = "".join(f'<nd ref="{r}"/>' for r in refs)
        tag_xml = "".join(f'<tag k="{k}" v="{v}"/>' for k, v in tags.items())
        xml_ways.append(f'<way id="{wid}" version="1">{nds}{tag_xml}</way>')
    path.write_text('<?xml version="1.0"?><osm version="0.6">' + "".join(nodes + xml_ways) + "</osm>")
    return path


def test_osm_closed_ways_follow_the_area_convention_and_every_geometry_is_clipped(tmp_path):
    import shapely

    from geolink_jax.osm import geometry
    from geolink_jax.osm import pbf as osm_pbf
    from geolink_jax.osm.tags import label_from_osm_tags

    def square(x, y, d=0.001):
        return [(x, y), (x + d, y), (x + d, y + d), (x, y + d), (x, y)]

    closed = {  # tags of a closed way → the kind it must become
        (("highway", "residential"), ("junction", "roundabout"), ("name", "Ring"), ("source", "survey")): "line",
        (("building", "yes"), ("name", "Hall")): "polygon",
        (("natural", "coastline"),): "line",
        (("highway", "pedestrian"), ("area", "yes")): "polygon",
        (("leisure", "track"),): "line",
        (("leisure", "park"), ("name", "Park")): "polygon",
        (("landuse", "grass"), ("area", "no")): "line",
    }
    ways = [(dict(tags), square(24.001 + 0.0015 * i, 60.001)) for i, tags in enumerate(closed)]
    # a self-intersecting road wholly inside the tile: the reference's clip (intersection + explode) splits it
    bowtie = [(24.002, 60.005), (24.004, 60.007), (24.004, 60.005), (24.002, 60.007)]
    ways.append(({"highway": "footway"}, bowtie))
    features = osm_pbf.OsmFeatures(_osm_xml(tmp_path / "t.osm", ways))
    labels = [features.labels[i] for i in range(len(features))]
    for tags, kind in closed.items():
        i = labels.index(label_from_osm_tags(dict(tags)))
        assert features.kinds[i] == kind, (tags, features.kinds[i])

    bbox = (24.0, 60.0, 24.02, 60.01)
    geoms, labels = features.query(bbox)
    layers, _ = geometry.clean_features(geoms, labels, ["t.osm"] * len(geoms), bbox)
    road = shapely.LineString(bowtie)
    reference_parts = shapely.get_parts(shapely.intersection(road, shapely.box(*bbox)))
    assert len(reference_parts) >= 2
    assert layers["line"].labels.count("highway:footway") == len(reference_parts)
