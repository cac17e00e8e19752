"""GAIR preprocessing: RS patches + a street-view table → patch records → ArrayRecord shards + manifest.json +
errors.jsonl (local processes or Apache Beam, same records).

Inputs, the layouts users have:
- patches: a directory of GeoTIFFs (any CRS, any band count; bands chosen by name from the band descriptions, or by
  position for the standard 13-band L1C / 12-band L2A stacks) or of `.npy` arrays [H, W, C] with a `<stem>.json`
  sidecar {"bbox": [lon_min, lat_max, lon_max, lat_min], "bands": [names]};
- a table (CSV or GeoParquet) of street-view photos, one row each: `sv_path` (relative to the table), `lon`, `lat`
  (or a point geometry), `time` (optional) and `patch` (the patch's file stem), Global Streetscapes style.

Record (format `geolink_jax.gair_patch` v1, msgpack as record_format.py):
  patch_id str; rs uint16/float32 [H, W, C] (the selected bands, raw values); bands list[str]; crs str;
  bbox_lonlat float64 [4] (lon_min, lat_max, lon_max, lat_min); sv_images list[bytes] (the photos' files as
  given, or with `sv_size` > 0 resized to it as uint8 pixels or JPEG: sv_format "raw" | "jpeg", "file" as given;
  sv_size int); sv_lonlat float64 [N, 2]; sv_rel float32 [N, 2] (relative (x, y) in the patch: linear in degrees of the
  lon/lat bbox as GAIR, or, with `coords="crs"`, in the patch's own CRS); sv_time list[str].

Every bad input is reported in errors.jsonl (patch, file, reason) and skipped, the run goes on: an unreadable
photo or patch, a location outside its patch, missing bands, NaN coordinates, a row naming no known patch, a patch
left without photos.
"""

import dataclasses
import functools
import io
import json
import pathlib

import numpy as np

from geolink_jax.data import item_job, outputs, record_format, shards

FORMAT, VERSION = "geolink_jax.gair_patch", 1
GAIR_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
L1C_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
L2A_ORDER = tuple(b for b in L1C_ORDER if b != "B10")
PATCH_SUFFIXES = (".tif", ".tiff", ".npy")


@dataclasses.dataclass(frozen=True)
class GAIRPreprocessConfig:
    bands: tuple = GAIR_BANDS
    coords: str = "degrees"  # sv_rel: "degrees" (GAIR: linear in the lon/lat bbox) or "crs" (the patch's own CRS)
    patches_per_shard: int = 256
    # > 0: photos stored already resized to sv_size × sv_size (bicubic, as the pipeline resizes), so a training host
    # only decodes them; sv_format "raw" (uint8 pixels: no decoding, the pipeline's pixels exactly, ~150 KB a photo
    # at 224 px) or "jpeg" (re-encoded at quality 95: ~7 KB, ~0.3 ms to decode, within a few 8-bit levels)
    sv_size: int = 0
    sv_format: str = "jpeg"


SV_FORMATS = ("jpeg", "raw")


def stored_photo(data, cfg: GAIRPreprocessConfig):
    """A photo file's bytes → what the record stores: the file itself, or (sv_size > 0) its pixels resized to
    sv_size × sv_size as the pipeline would, raw or re-encoded as JPEG."""
    if not cfg.sv_size:
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        pil = im.convert("RGB").resize((cfg.sv_size, cfg.sv_size), Image.BICUBIC)
    if cfg.sv_format == "raw":
        return pil.tobytes()
    buf = io.BytesIO()
    pil.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def photo_pixels(record, i, size):
    """Photo i of a decoded record → uint8 [size, size, 3]: raw pixels as stored, or the decoded file resized
    (bicubic) to size when it is not stored at that size."""
    from PIL import Image

    data = record["sv_images"][i]
    if record.get("sv_format") == "raw":
        stored = int(record["sv_size"])
        x = np.frombuffer(data, np.uint8).reshape(stored, stored, 3)
        if stored == size:
            return x
        return np.asarray(Image.fromarray(x).resize((size, size), Image.BICUBIC))
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    return np.asarray(pil if pil.size == (size, size) else pil.resize((size, size), Image.BICUBIC))


@dataclasses.dataclass(frozen=True)
class PatchSpec:
    index: int
    patch_id: str
    path: str
    photos: tuple  # ((sv_path, lon, lat, time, row number), ...)


def _problem(patch_id, reason, file="", detail="", severity="error"):
    return {"tile_id": patch_id, "severity": severity, "reason": reason, "file": str(file), "detail": detail}


def read_table(path):
    """The street-view table → list of dicts (sv_path absolute, lon, lat, time, patch, row). CSV or GeoParquet."""
    import pandas as pd

    path = pathlib.Path(path)
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        import geopandas as gpd

        try:
            frame = gpd.read_parquet(path)
            if "lon" not in frame and frame.geometry is not None:
                frame = frame.to_crs("EPSG:4326") if frame.crs else frame
                frame["lon"], frame["lat"] = frame.geometry.x, frame.geometry.y
        except ValueError:  # plain Parquet without geometry
            frame = pd.read_parquet(path)
    else:
        frame = pd.read_csv(path, dtype={"patch": str, "time": str})
    missing = [c for c in ("sv_path", "lon", "lat", "patch") if c not in frame]
    if missing:
        raise shards.DataError(f"{path}: the street-view table has no column(s) {', '.join(missing)} (needs sv_path, "
                               "lon, lat, patch; time optional)")
    rows = []
    for i, r in enumerate(frame.itertuples(index=False)):
        d = r._asdict()
        rows.append(dict(sv_path=str(path.parent / str(d["sv_path"])), lon=_number(d["lon"]), lat=_number(d["lat"]),
                         time="" if d.get("time") is None or d.get("time") != d.get("time") else str(d["time"]),
                         patch=str(d["patch"]), row=i + 2 if path.suffix.lower() == ".csv" else i))
    return rows


def _number(value):
    """A coordinate cell → float, or the cell's text where it is not a number (that row becomes an error row)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def discover(patches_dir, table):
    """(PatchSpecs, problems of rows that name no patch)."""
    patches_dir = pathlib.Path(patches_dir)
    files = sorted(p for p in patches_dir.iterdir() if p.suffix.lower() in PATCH_SUFFIXES)
    if not files:
        raise shards.DataError(f"{patches_dir}: no patches (*.tif, *.tiff, *.npy)")
    by_patch = {p.stem: [] for p in files}
    problems = []
    for r in read_table(table):
        text = [f"{k} {r[k]!r}" for k in ("lon", "lat") if isinstance(r[k], str)]
        if text:
            problems.append(_problem(r["patch"], f"coordinate not a number: {', '.join(text)}", table,
                                     f"row {r['row']}: {r['sv_path']}"))
            continue
        if r["patch"] not in by_patch:
            problems.append(_problem(r["patch"], "row names no patch in the patches directory", table,
                                     f"row {r['row']}: {r['sv_path']}"))
            continue
        by_patch[r["patch"]].append((r["sv_path"], r["lon"], r["lat"], r["time"], r["row"]))
    specs = [PatchSpec(i, p.stem, str(p), tuple(by_patch[p.stem])) for i, p in enumerate(files)]
    return specs, problems


def _band_names(count, described):
    if described and all(described):
        return [d.upper() for d in described]
    return list({13: L1C_ORDER, 12: L2A_ORDER}.get(count, ()))


def read_patch(path, bands):
    """A patch file → (array [H, W, len(bands)], crs (pyproj CRS or None), bbox_lonlat (lon_min, lat_max, lon_max,
    lat_min), bounds in the native CRS (left, top, right, bottom)). Raises ValueError naming what is wrong."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
        side = path.with_suffix(".json")
        if not side.exists():
            raise ValueError(f"no sidecar {side.name} with the patch's bbox")
        meta = json.loads(side.read_text())
        names = [b.upper() for b in meta.get("bands", [])] or _band_names(arr.shape[-1], None)
        bbox = tuple(float(v) for v in meta["bbox"])
        crs, native = None, (bbox[0], bbox[1], bbox[2], bbox[3])
    else:
        import rasterio
        from rasterio.warp import transform_bounds

        with rasterio.open(path) as src:
            names = _band_names(src.count, src.descriptions)
            arr = src.read().transpose(1, 2, 0)
            crs = src.crs
            b = src.bounds
            west, south, east, north = transform_bounds(crs, "EPSG:4326", *b, densify_pts=21) if crs else b
            bbox = (west, north, east, south)
            native = (b.left, b.top, b.right, b.bottom)
    if arr.ndim != 3 or len(names) != arr.shape[-1]:
        raise ValueError(f"{arr.shape[-1] if arr.ndim == 3 else '?'} bands without names (set band descriptions, "
                         "or give a 12/13-band Sentinel-2 stack)")
    missing = [b for b in bands if b not in names]
    if missing:
        raise ValueError(f"missing bands {', '.join(missing)} (has {', '.join(names)})")
    arr = arr[..., [names.index(b) for b in bands]]
    if not np.isfinite(arr.astype(np.float32)).all():
        raise ValueError("non-finite pixel values")
    return arr, crs, bbox, native


def relative_coords(lon, lat, bbox, crs=None, native=None):
    """(x, y) of a location in its patch: linear in degrees of the lon/lat bbox (GAIR), or in the patch's CRS."""
    if crs is None:
        lon_min, lat_max, lon_max, lat_min = bbox
        return (lon - lon_min) / (lon_max - lon_min), (lat_max - lat) / (lat_max - lat_min)
    import pyproj

    x, y = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    left, top, right, bottom = native
    return (x - left) / (right - left), (top - y) / (top - bottom)


def process_patch(spec: PatchSpec, cfg: GAIRPreprocessConfig):
    """One patch and its photos → (record bytes or None, summary {index, patch_id, written, counts, problems})."""
    from PIL import Image

    problems = []
    summary = dict(index=spec.index, patch_id=spec.patch_id, written=False, counts=None, problems=problems)
    try:
        arr, crs, bbox, native = read_patch(spec.path, cfg.bands)
    except Exception as e:  # noqa: BLE001 - any unreadable patch is reported, the run goes on
        problems.append(_problem(spec.patch_id, f"unreadable patch: {e}", spec.path))
        return None, summary
    images, lonlat, rel, times = [], [], [], []
    for sv_path, lon, lat, when, row in spec.photos:
        where = f"row {row}"
        if not (np.isfinite(lon) and np.isfinite(lat)):
            problems.append(_problem(spec.patch_id, "NaN coordinates", sv_path, where))
            continue
        x, y = relative_coords(lon, lat, bbox, crs if cfg.coords == "crs" else None, native)
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            problems.append(_problem(spec.patch_id, "location outside its patch", sv_path,
                                     f"{where}: lon {lon}, lat {lat}; patch bbox {tuple(round(v, 6) for v in bbox)}"))
            continue
        try:
            data = pathlib.Path(sv_path).read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as e:  # noqa: BLE001
            problems.append(_problem(spec.patch_id, f"unreadable photo: {type(e).__name__}: {e}", sv_path, where))
            continue
        images.append(stored_photo(data, cfg))
        lonlat.append((lon, lat))
        rel.append((x, y))
        times.append(when)
    if not images:
        problems.append(_problem(spec.patch_id, "no usable street-view photo: patch skipped", spec.path))
        return None, summary
    record = dict(patch_id=spec.patch_id, rs=arr, bands=list(cfg.bands), crs=str(crs or "EPSG:4326"),
                  bbox_lonlat=np.asarray(bbox, np.float64), sv_images=images,
                  sv_lonlat=np.asarray(lonlat, np.float64), sv_rel=np.asarray(rel, np.float32), sv_time=times,
                  coords=cfg.coords, sv_size=cfg.sv_size, sv_format=cfg.sv_format if cfg.sv_size else "file")
    summary.update(written=True, counts=dict(sv=len(images), height=arr.shape[0], width=arr.shape[1]))
    return record_format.encode(record, FORMAT, VERSION), summary


def decode(data):
    return record_format.decode(data, FORMAT, VERSION)


def make_manifest(summaries, shard_infos, extra_problems, cfg, num_patches):
    written = [s for s in summaries if s["written"]]
    problems = [p for s in summaries for p in s["problems"]] + list(extra_problems)
    return {
        "format": FORMAT, "record_version": VERSION, "family": "gair",
        "num_patches": num_patches, "num_records": len(written),
        "num_failed_patches": sum(not s["written"] for s in summaries),
        "num_sv": sum(s["counts"]["sv"] for s in written),
        "num_dropped_rows": len(problems) - sum(not s["written"] for s in summaries),
        "problems": {k: sum(p["severity"] == k for p in problems) for k in ("error", "warning", "note")},
        "bands": list(cfg.bands),
        "sv_stored": dict(size=cfg.sv_size, format=cfg.sv_format if cfg.sv_size else "file"),
        "sv_per_patch": outputs.stats([s["counts"]["sv"] for s in written]),
        # photos of each record in record order (shards by name, items by index): what per-photo sampling indexes
        "sv_counts": [s["counts"]["sv"] for s in sorted(written, key=lambda s: s["index"])],
        "rs_size": {k: outputs.stats([s["counts"][k] for s in written]) for k in ("height", "width")},
        "shards": sorted(shard_infos, key=lambda s: s["path"]),
        "writer_options": shards.WRITER_OPTIONS,
        "errors_file": outputs.ERRORS,
        "config": dataclasses.asdict(cfg),
    }


def _job(patches_dir, table, cfg):
    specs, extra = discover(patches_dir, table)
    return dict(specs=specs, process=functools.partial(process_patch, cfg=cfg),
                manifest=functools.partial(make_manifest, cfg=cfg, num_patches=len(specs)),
                items_per_shard=cfg.patches_per_shard, extra_problems=extra)


def run_local(patches_dir, table, out_dir, cfg=GAIRPreprocessConfig(), progress=True, overwrite=False):
    """Preprocess into out_dir (staged: appears whole or not at all). Returns the manifest."""
    return item_job.run_local(out_dir=out_dir, progress=progress, overwrite=overwrite, unit="patch",
                              **_job(patches_dir, table, cfg))


def run_beam(patches_dir, table, out_dir, cfg=GAIRPreprocessConfig(), pipeline_options=None):
    """The same job as an Apache Beam pipeline: patches in parallel, the same shards and manifest."""
    return item_job.run_beam(out_dir=out_dir, pipeline_options=pipeline_options, **_job(patches_dir, table, cfg))


def bundled(out_dir):
    """The bundled demo patches + photos preprocessed into out_dir once (reused when its manifest exists)."""
    from geolink_jax import samples

    out_dir = pathlib.Path(out_dir)
    if not (out_dir / outputs.MANIFEST).exists():
        run_local(samples.GAIR_DIR / "patches", samples.GAIR_DIR / "street_view.csv", out_dir, progress=False,
                  overwrite=True)
    return out_dir
