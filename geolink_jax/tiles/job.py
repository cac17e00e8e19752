"""The tile job: tiles → graph records → ArrayRecord shards + manifest.json + errors.jsonl.

`process_tile` is the whole per-tile computation, a pure function of (TileSpec, PreprocessConfig); the local runner
(`run_local`, worker processes) and the Beam pipeline (`run_beam`) are the job framework's (`data/item_job.py`)
over it, with this job's manifest, so their outputs are identical.

Problems never pass silently: each goes to errors.jsonl with tile, file, severity and reason, and the manifest
counts them. 'error' means the tile was not written, 'warning' that a feature was repaired or dropped, 'note' an
expected condition (empty layer, image-only tile, Delaunay skipped). `strict` turns any error or warning fatal.
"""
import dataclasses
import functools
import json
import os
import pathlib

import numpy as np

from geolink_jax.data import image_rule, item_job, outputs, record_format, shards
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES, geometry, osm_graph, tag_encoders
from geolink_jax.tiles import sources as tile_sources
from geolink_jax.tiles.sources import TileError

PreprocessError = outputs.JobError  # a --strict stop, an output in the way


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Options of a preprocessing run (recorded in the manifest)."""

    encoder: str = "e5"                 # tag encoder spec: e5 | hash[:dim] | clip[:path]
    seed: int = 0                       # polygon sample-point seed (mixed with each tile id)
    invalid_geometry: str = "repair"    # repair (shapely.make_valid) | skip
    max_features: int = 5000            # tiles with more cleaned features are reported and not written
    aspect_tolerance: float = 0.25      # bbox ground aspect vs image pixel aspect
    tiles_per_shard: int = 512
    pbf: str | None = None              # OSM PBF to take features from (in addition to vector files)
    bands: str = ""                     # image rule (data/image_rule.py): band selection, "" = first 3 / grey
    stretch: str = "auto"               # image rule: auto | percentile:LO,HI | range:MIN,MAX[,...] | none

    @property
    def image_rule(self):
        return image_rule.ImageRule(self.bands, self.stretch)


@dataclasses.dataclass
class TileResult:
    """Outcome of one tile: the encoded record (None if not written) and a small summary for the manifest."""

    index: int
    tile_id: str
    record: bytes | None
    summary: dict


_ENCODERS = {}


def _encoder(spec):
    # One encoder per process and spec: model loading and the per-tag cache are reused across tiles.
    if spec not in _ENCODERS:
        _ENCODERS[spec] = tag_encoders.make_encoder(spec)
    return _ENCODERS[spec]


def _lonlat_transform(crs):
    import pyproj

    if crs.equals(pyproj.CRS("EPSG:4326")):
        return None
    tr = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    return tr.transform


def _tile_graph(spec, image, cfg, problems):
    """Vectors (files and/or PBF) → cleaned layers → TileGraph, in the image's CRS."""
    to_lonlat = _lonlat_transform(image.crs)
    recoded = []
    geoms, labels, sources, empty = tile_sources.read_vectors(spec.vectors, image.crs, recoded)
    for path in empty:
        problems.append(geometry.Problem("note", "empty layer", path))
    for path in recoded:
        problems.append(geometry.Problem("warning", "text is not valid UTF-8: invalid bytes replaced (U+FFFD)", path))
    if cfg.pbf:
        from geolink_jax.osm import pbf as osm_pbf

        g, lbl = osm_pbf.load(cfg.pbf).query(_bbox_lonlat(image))
        if to_lonlat is not None:
            import geopandas as gpd

            g = gpd.GeoSeries(g, crs="EPSG:4326").to_crs(image.crs).values
        geoms += list(g)
        labels += lbl
        sources += [os.path.basename(cfg.pbf)] * len(g)
    if not spec.vectors and not cfg.pbf:
        problems.append(geometry.Problem("note", "no OSM vector files: image-only tile", spec.image))
    layers, feature_problems = geometry.clean_features(geoms, labels, sources, image.bbox, cfg.invalid_geometry)
    problems += feature_problems
    total = sum(len(layer) for layer in layers.values())
    if total > cfg.max_features:
        import collections

        (biggest, count), = collections.Counter(sources).most_common(1)  # name the input that makes the tile big
        path = next((v for v in (*spec.vectors, cfg.pbf) if v and os.path.basename(v) == os.path.basename(biggest)),
                    biggest)
        raise TileError(f"tile has {total} features, over the cap of {cfg.max_features}", path,
                        f"{count} raw features from this file")
    if total == 0 and (spec.vectors or cfg.pbf):
        problems.append(geometry.Problem("note", "no OSM features inside the tile: image-only tile",
                                         spec.vectors[0] if spec.vectors else cfg.pbf))
    delaunay = osm_graph.point_lonlat(layers["point"].geoms, to_lonlat)
    graph, notes = osm_graph.build_tile_graph(layers, image.bbox, _encoder(cfg.encoder), spec.tile_id,
                                              seed=cfg.seed, delaunay_coords=delaunay)
    problems += [geometry.Problem("note", n, spec.tile_id) for n in notes]
    return graph


def _bbox_lonlat(image):
    """The tile footprint as (west, south, east, north) in EPSG:4326 (the enclosing box for projected CRSs)."""
    import pyproj

    if image.crs.equals(pyproj.CRS("EPSG:4326")):
        return tuple(float(v) for v in image.bbox)
    tr = pyproj.Transformer.from_crs(image.crs, "EPSG:4326", always_xy=True)
    return tuple(float(v) for v in tr.transform_bounds(*image.bbox))


def graph_record(spec, image, graph, encoder_meta):
    """Assemble the record dict of `record_format` from a tile's parts."""
    rec = {
        "tile_id": spec.tile_id,
        "image": image.data,
        "image_format": image.format,
        "image_size": np.array([image.height, image.width], np.int32),
        "bbox_lonlat": np.array(_bbox_lonlat(image), np.float64),
        "crs": image.crs.to_string(),
        "meta": {"encoder": encoder_meta, "image_file": os.path.basename(spec.image),
                 "vector_files": [os.path.basename(v) for v in spec.vectors]},
    }
    if image.source is not None:  # a raster converted to 8-bit RGB: its dtype, bands and stretch bounds
        rec["meta"]["image"] = image.source
    if spec.graph_npz and not spec.bbox_file:
        rec["meta"]["footprint"] = "unknown"  # downstream tiles without a sidecar: bbox_lonlat is a placeholder
    for t in NODE_TYPES:
        rec[f"x_{t}"] = graph.features[t]
        rec[f"pos_{t}"] = graph.positions[t]
        rec[f"labels_{t}"] = list(graph.labels[t])
    for r in RELATION_NAMES:
        rec[f"edge_index_{r}"] = graph.edge_index[r].astype(np.int32)
        rec[f"edge_attr_{r}"] = graph.edge_attr[r].astype(np.uint8)
    return rec


def process_tile(spec, cfg):
    """One tile → TileResult. Never raises for bad input: problems are in `summary['problems']`."""
    problems = []
    record, counts, encoder_meta = None, None, None
    try:
        if spec.orphan:
            raise TileError(f"vector files without an image tile (expected {spec.tile_id}.jpg/.png/.tif beside them)",
                            spec.vectors[0], ", ".join(pathlib.Path(v).name for v in spec.vectors))
        if not os.path.exists(spec.image):
            raise TileError("image file missing", spec.image)
        image = tile_sources.read_image(spec, cfg.aspect_tolerance, cfg.image_rule)
        if spec.graph_npz:
            graph = osm_graph.graph_from_npz(spec.graph_npz)
            encoder_meta = {"name": "precomputed", "spec": "precomputed:clip",
                            "dim": int(graph.features["polygon"].shape[1])}
        else:
            graph = _tile_graph(spec, image, cfg, problems)
            encoder_meta = _encoder(cfg.encoder).metadata()
        rec = graph_record(spec, image, graph, encoder_meta)
        if spec.label_image:
            with open(spec.label_image, "rb") as f:
                rec["label_image"], rec["label_format"] = f.read(), "png"
        record = record_format.encode(rec)
        counts = {"nodes": {t: graph.num_nodes(t) for t in NODE_TYPES},
                  "edges": {r: graph.num_edges(r) for r in RELATION_NAMES},
                  "image": {"height": int(image.height), "width": int(image.width)}}
    except TileError as e:
        problems.append(geometry.Problem("error", e.reason, e.file, e.detail))
    except Exception as e:  # a bug or an unforeseen input: report it with the tile, keep the job going
        problems.append(geometry.Problem("error", f"unexpected failure: {type(e).__name__}", spec.image, str(e)))
    summary = {
        "index": spec.index, "tile_id": spec.tile_id, "written": record is not None, "counts": counts,
        "encoder": encoder_meta, "problems": [p.as_dict(spec.tile_id) for p in problems],
    }
    return TileResult(spec.index, spec.tile_id, record, summary)


def check_strict(summary):
    """--strict: a tile's first error or warning stops the job (PreprocessError)."""
    bad = [p for p in summary["problems"] if p["severity"] in ("error", "warning")]
    if bad:
        p = bad[0]
        raise PreprocessError(f"--strict: tile {p['tile_id']}: {p['file']}: {p['reason']} {p['detail']}".strip())


def make_manifest(summaries, shard_infos, cfg, num_tiles):
    """Manifest dict from all tile summaries (any order) and [{'path', 'num_records'}] of the shard files."""
    summaries = sorted(summaries, key=lambda s: s["index"])
    written = [s for s in summaries if s["written"]]
    encoders = {json.dumps(s["encoder"], sort_keys=True) for s in written}
    if len(encoders) > 1:
        raise PreprocessError(f"records with different tag encoders in one run: {sorted(encoders)}")
    encoder = json.loads(encoders.pop()) if encoders else _encoder(cfg.encoder).metadata()
    problems = [p for s in summaries for p in s["problems"]]
    severity = {k: sum(p["severity"] == k for p in problems) for k in ("error", "warning", "note")}
    return {
        "format": record_format.FORMAT,
        "record_version": record_format.VERSION,
        "num_tiles": num_tiles,
        "num_records": len(written),
        "num_failed_tiles": sum(not s["written"] for s in summaries),
        "num_image_only": sum(sum(s["counts"]["nodes"].values()) == 0 for s in written),
        "problems": severity,
        "encoder": encoder,
        "feature_dim": int(encoder["dim"]),
        "shards": sorted(shard_infos, key=lambda s: s["path"]),
        "writer_options": shards.WRITER_OPTIONS,
        "node_counts": {t: outputs.stats([s["counts"]["nodes"][t] for s in written]) for t in NODE_TYPES},
        "edge_counts": {r: outputs.stats([s["counts"]["edges"][r] for s in written]) for r in RELATION_NAMES},
        # decoded image sizes: the canvas of on-device augmentation (data.augment_on_device)
        "image_size": {k: outputs.stats([s["counts"]["image"][k] for s in written]) for k in ("height", "width")},
        "errors_file": outputs.ERRORS,
        "config": dataclasses.asdict(cfg),
    }


def process_item(spec, cfg):
    """process_tile as the job framework's item function: → (record bytes | None, summary)."""
    result = process_tile(spec, cfg)
    return result.record, result.summary


def dead_worker_item(spec):
    """A tile whose worker process died twice (killed, out of memory): not written, reported."""
    problem = geometry.Problem("error", "worker process died while processing this tile (killed or out of memory; "
                                        "retried once)", spec.image, "")
    return None, {"index": spec.index, "tile_id": spec.tile_id, "written": False, "counts": None, "encoder": None,
                  "problems": [problem.as_dict(spec.tile_id)]}


def job_manifest(summaries, shard_infos, extra_problems, cfg, num_tiles):
    """make_manifest, with the tiles whose worker died listed under runner.dead_worker_tiles."""
    manifest = make_manifest(summaries, shard_infos, cfg, num_tiles)
    manifest["runner"] = {"dead_worker_tiles": [
        s["tile_id"] for s in sorted(summaries, key=lambda s: s["index"])
        if any(p["reason"].startswith("worker process died") for p in s["problems"])]}
    return manifest


def _job(specs, cfg, strict):
    """The tile job for `item_job`: item function, manifest, shard size, --strict check."""
    return dict(specs=specs, process=functools.partial(process_item, cfg=cfg),
                manifest=functools.partial(job_manifest, cfg=cfg, num_tiles=len(specs)),
                items_per_shard=cfg.tiles_per_shard,
                check=(lambda record, summary: check_strict(summary)) if strict else None)


def run_local(specs, out_dir, cfg=PreprocessConfig(), workers=None, strict=False, progress=True, overwrite=False):
    """Process `specs` in `workers` processes (default: all cores) and write shards, manifest and errors report.

    Returns the manifest dict. Shard k holds the written tiles with `shard_of(index) == k`, in input order.
    Everything is written into a staging directory beside `out_dir` that replaces it only when complete: a failed
    or interrupted run leaves `out_dir` as it was, and an output is never a mix of two runs. An existing non-empty
    `out_dir` needs overwrite=True. A worker process that dies on a tile (killed, out of memory) is retried once,
    then the tile is reported and the rest go on.
    """
    return item_job.run_local(out_dir=out_dir, progress=progress, overwrite=overwrite, unit="tile",
                              workers=workers or os.cpu_count() or 1, dead_item=dead_worker_item,
                              **_job(specs, cfg, strict))


def run_beam(specs, out_dir, cfg=PreprocessConfig(), strict=False, beam_args=()):
    """The same job as an Apache Beam pipeline (DirectRunner unless `beam_args` names another runner; output a local
    path or any Beam filesystem URL): the same shards, manifest and errors.jsonl. Returns the manifest."""
    from apache_beam.options.pipeline_options import PipelineOptions

    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        args.append("--runner=DirectRunner")
    return item_job.run_beam(out_dir=out_dir, pipeline_options=PipelineOptions(args), **_job(specs, cfg, strict))


def bundled_tiles(out_dir, encoder="e5"):
    """The bundled real sample tiles preprocessed into out_dir once (reused when its manifest exists) → out_dir."""
    from geolink_jax import samples

    out_dir = pathlib.Path(out_dir)
    if not (out_dir / outputs.MANIFEST).exists():
        run_local(tile_sources.discover_tiles(samples.OSM_TILES_DIR), out_dir, PreprocessConfig(encoder=encoder),
                  workers=1, progress=False, overwrite=True)  # our own cache: an interrupted one is redone
    return out_dir


def read_records(out_dir):
    """All records of a preprocessed directory, decoded, in shard order."""
    out_dir = pathlib.Path(out_dir)
    return [r for s in outputs.load_manifest(out_dir)["shards"] for r in shards.read_shard(out_dir / s["path"])]


def format_summary(manifest):
    """Human-readable summary of a manifest (printed by the CLI)."""
    lines = [
        f"tiles: {manifest['num_tiles']}  written: {manifest['num_records']}  failed: {manifest['num_failed_tiles']}"
        f"  image-only: {manifest['num_image_only']}",
        "problems: " + ", ".join(f"{k} {v}" for k, v in manifest["problems"].items())
        + f"  (see {manifest['errors_file']})",
        f"encoder: {manifest['encoder']['spec']}  feature_dim: {manifest['feature_dim']}",
        f"shards: {len(manifest['shards'])} x ArrayRecord ({manifest['writer_options']})",
    ]
    if "runner" in manifest:
        r = manifest["runner"]
        lines.append(f"runner: {r['name']}, {r.get('workers', '?')} workers, {r['seconds']:.1f} s, "
                     f"{manifest['num_tiles'] / max(r['seconds'], 1e-9):.2f} tiles/s")
    lines.append(f"{'nodes':<22}" + "".join(f"{k:>8}" for k in ("p50", "p90", "p99", "max")))
    for t, s in manifest["node_counts"].items():
        lines.append(f"  {t:<20}" + "".join(f"{s[k]:>8.0f}" for k in ("p50", "p90", "p99", "max")))
    lines.append(f"{'edges':<22}" + "".join(f"{k:>8}" for k in ("p50", "p90", "p99", "max")))
    for r, s in manifest["edge_counts"].items():
        lines.append(f"  {r:<20}" + "".join(f"{s[k]:>8.0f}" for k in ("p50", "p90", "p99", "max")))
    return "\n".join(lines)
