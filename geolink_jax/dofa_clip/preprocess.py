"""DOFA-CLIP preprocessing: image–caption pairs → ArrayRecord shards + manifest.json + errors.jsonl (in this
process or on Apache Beam, the same records; data/item_job.py).

Sources:
- a table (CSV, Parquet or JSONL), one pair a row: `image` (a path relative to the table: GeoTIFF of any band
  count, PNG or JPEG), `caption`, and optionally `wavelengths` (µm: a JSON list, or a sensor name of `SENSORS`;
  default: RGB for PNG/JPEG, the sensor the band count implies for rasters) and `source` (the name the batch mixer
  weighs; default the table's stem);
- `osm_pairs(tiles_dir)`: this library's image + OSM tiles captioned from their tags (dofa_clip/captions.py).

Record (format `geolink_jax.dofa_clip_pair` v1, msgpack as record_format.py):
  pair_id str; image bytes (PNG/JPEG as given, or a PNG crop) or uint8 [H, W, C] (a raster stretched to 8 bits
  per band, `stretch` as data/image_rule.py); image_format "jpeg" | "png" | "array"; wavelengths float32 [C] (µm);
  caption str; source str; meta {file, window, stretch bounds}; teacher_<name> float16 [T, D] once a teacher's
  features are cached (dofa_clip/teachers.py).
Every bad row is reported in errors.jsonl (pair, file, reason) and skipped: an unreadable image, an empty caption,
wavelengths that do not match the band count, an unknown sensor, a band of nodata only, an image smaller than
`min_size`.
"""

import dataclasses
import functools
import io
import json
import pathlib

import numpy as np

from geolink_jax.data import item_job, outputs, record_format, shards
from geolink_jax.data.image_rule import ImageRuleError, parse_stretch, stretch_to_uint8
from geolink_jax.data.sensors import check_wavelengths
from geolink_jax.dofa_clip.pairs import BY_COUNT, IMAGE_SUFFIXES, RGB, SENSORS, PairSpec, problem  # noqa: F401

FORMAT, VERSION = "geolink_jax.dofa_clip_pair", 1
@dataclasses.dataclass(frozen=True)
class PairPreprocessConfig:
    stretch: str = "auto"  # rasters → 8 bits per band: auto | percentile:LO,HI | range:MIN,MAX[,…per band] | none
    min_size: int = 16  # smaller images are reported and skipped
    pairs_per_shard: int = 1024


def parse_wavelengths(value):
    """A table cell → tuple of µm, or None (from the file); raises ValueError for an unknown sensor or wavelengths
    that are not finite, not positive or clearly nanometres (`data.sensors.check_wavelengths`)."""
    if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return check_wavelengths(value)
    text = str(value).strip()
    if text.startswith("["):
        return check_wavelengths(json.loads(text))
    if text not in SENSORS:
        raise ValueError(f"unknown sensor {text!r} (known: {', '.join(SENSORS)}; or give a JSON list of µm)")
    return SENSORS[text]


def read_table(path):
    """A pair table → (PairSpecs, problems of rows that cannot become specs)."""
    import pandas as pd

    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".geoparquet"):
        frame = pd.read_parquet(path)
    elif suffix in (".jsonl", ".json"):
        frame = pd.read_json(path, lines=suffix == ".jsonl")
    else:
        frame = pd.read_csv(path, dtype={"caption": str, "source": str})
    missing = [c for c in ("image", "caption") if c not in frame]
    if missing:
        raise shards.DataError(f"{path}: the pair table has no column(s) {', '.join(missing)} (needs image, caption; "
                               "wavelengths and source optional)")
    specs, problems = [], []
    first = 2 if suffix == ".csv" else 0
    for i, r in enumerate(frame.to_dict("records")):
        where = f"row {i + first}"
        source = r.get("source")
        source = path.stem if source is None or source != source or not str(source) else str(source)
        try:
            wl = parse_wavelengths(r.get("wavelengths"))
        except (ValueError, TypeError) as e:  # the row's id, as a spec of it would have had
            problems.append(problem(f"{source}/{i}", f"bad wavelengths: {e}", path, f"{where}: {r['image']}"))
            continue
        caption = "" if r["caption"] is None or r["caption"] != r["caption"] else str(r["caption"])
        specs.append(PairSpec(len(specs), f"{source}/{i}", str(path.parent / str(r["image"])), caption, wl, source,
                              row=where))
    return specs, problems


def read_image(spec: PairSpec, cfg: PairPreprocessConfig):
    """→ (image bytes or uint8 array, format, wavelengths tuple, meta). Raises ValueError naming what is wrong."""
    from PIL import Image

    path = pathlib.Path(spec.path)
    meta = {"file": path.name}
    if path.suffix.lower() in IMAGE_SUFFIXES:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt = "jpeg" if im.format == "JPEG" else "png"
            if spec.window is not None:
                im = im.convert("RGB").crop(spec.window)
                buf = io.BytesIO()
                im.save(buf, "PNG")
                data, fmt = buf.getvalue(), "png"
                meta["window"] = list(spec.window)
            size = im.size
            bands = 3 if im.mode not in ("L", "LA") else 1
        wl = spec.wavelengths or RGB
        if len(wl) != 3:
            raise ValueError(f"{len(wl)} wavelengths for an RGB image")
        return data, fmt, tuple(wl), meta, (size[1], size[0], bands)
    import rasterio

    with rasterio.open(path) as src:
        arr = src.read().transpose(1, 2, 0)
        nodata = src.nodata
    if spec.window is not None:
        x0, y0, x1, y1 = spec.window
        arr = arr[y0:y1, x0:x1]
        meta["window"] = list(spec.window)
    wl = spec.wavelengths or SENSORS.get(BY_COUNT.get(arr.shape[-1], ""))
    if wl is None:
        raise ValueError(f"{arr.shape[-1]} bands and no wavelengths (give a wavelengths column: a JSON list of µm "
                         f"or one of {', '.join(SENSORS)})")
    if len(wl) != arr.shape[-1]:
        raise ValueError(f"{len(wl)} wavelengths for {arr.shape[-1]} bands")
    image, info = stretch_to_uint8(arr, parse_stretch(cfg.stretch), nodata)
    meta["stretch"] = info
    return image, "array", tuple(wl), meta, image.shape


def process_pair(spec: PairSpec, cfg: PairPreprocessConfig):
    """One pair → (record bytes or None, summary {index, pair_id, written, counts, problems})."""
    problems = []
    summary = dict(index=spec.index, pair_id=spec.pair_id, written=False, counts=None, problems=problems,
                   source=spec.source)
    where = spec.row
    if not spec.caption.strip():
        problems.append(problem(spec.pair_id, "empty caption", spec.path, where))
        return None, summary
    try:
        image, fmt, wl, meta, shape = read_image(spec, cfg)
    except (ImageRuleError, ValueError) as e:
        problems.append(problem(spec.pair_id, str(e), spec.path, where))
        return None, summary
    except Exception as e:  # noqa: BLE001 - any unreadable image is reported, the run goes on
        problems.append(problem(spec.pair_id, f"unreadable image: {type(e).__name__}: {e}", spec.path, where))
        return None, summary
    if min(shape[:2]) < cfg.min_size:
        problems.append(problem(spec.pair_id, f"image {shape[1]}×{shape[0]} px is smaller than min_size "
                                 f"{cfg.min_size}", spec.path, where))
        return None, summary
    record = dict(pair_id=spec.pair_id, image=image, image_format=fmt, wavelengths=np.asarray(wl, np.float32),
                  caption=spec.caption, source=spec.source, meta=meta)
    summary.update(written=True, counts=dict(height=int(shape[0]), width=int(shape[1]), bands=len(wl)),
                   wavelengths=[round(float(w), 6) for w in wl])
    return record_format.encode(record, FORMAT, VERSION), summary


def decode(data):
    return record_format.decode(data, FORMAT, VERSION)


def decode_image(record):
    """A record's image → uint8 [H, W, C]."""
    from PIL import Image

    if record["image_format"] == "array":
        return np.asarray(record["image"])
    with Image.open(io.BytesIO(record["image"])) as im:
        return np.asarray(im.convert("RGB"))


def make_manifest(summaries, shard_infos, extra_problems, cfg, num_pairs):
    """The manifest. `groups` lists every (band set, source) with its record count; `record_groups` gives the group of
    every record in shard order as runs [[group, count], …] (shards hold records in pair order), so the batch mixer
    finds each group's records without reading them."""
    summaries = sorted(summaries, key=lambda s: s["index"])
    written = [s for s in summaries if s["written"]]
    problems = [p for s in summaries for p in s["problems"]] + list(extra_problems)
    keys, groups, runs = {}, [], []
    for s in written:
        key = (json.dumps(s["wavelengths"]), s["source"])
        if key not in keys:
            keys[key] = len(groups)
            groups.append(dict(wavelengths=s["wavelengths"], source=s["source"], count=0))
        g = keys[key]
        groups[g]["count"] += 1
        if runs and runs[-1][0] == g:
            runs[-1][1] += 1
        else:
            runs.append([g, 1])
    return {
        "format": FORMAT, "record_version": VERSION, "family": "dofa_clip",
        "num_pairs": num_pairs, "num_records": len(written),
        "num_dropped": num_pairs - len(written),  # num_pairs counts every input row, those the table refused too
        "problems": {k: sum(p["severity"] == k for p in problems) for k in ("error", "warning", "note")},
        "groups": groups,
        "record_groups": runs,
        "sources": sorted({s["source"] for s in written}),
        "max_bands": max((s["counts"]["bands"] for s in written), default=0),
        "image_size": {k: outputs.stats([s["counts"][k] for s in written]) for k in ("height", "width")},
        "teachers": {},
        "shards": sorted(shard_infos, key=lambda s: s["path"]),
        "writer_options": shards.WRITER_OPTIONS,
        "errors_file": outputs.ERRORS,
        "config": dataclasses.asdict(cfg),
    }


def _job(specs, extra, cfg):
    return dict(specs=specs, process=functools.partial(process_pair, cfg=cfg),
                manifest=functools.partial(make_manifest, cfg=cfg, num_pairs=len(specs) + len(extra)),
                items_per_shard=cfg.pairs_per_shard, extra_problems=extra)


def gather(sources):
    """Sources (pair tables, or directories of image + OSM tiles) → (PairSpecs numbered across all, problems)."""
    from geolink_jax.dofa_clip import captions

    specs, problems = [], []
    for src in sources:
        src = pathlib.Path(src)
        if src.is_dir():
            got, bad = captions.osm_pairs(src)
        elif src.is_file():
            got, bad = read_table(src)
        else:
            raise shards.DataError(f"{src}: no such pair table or tile directory")
        specs += [dataclasses.replace(s, index=len(specs) + i) for i, s in enumerate(got)]
        problems += bad
    return specs, problems


def run_local(sources, out_dir, cfg=PairPreprocessConfig(), progress=True, overwrite=False):
    """Preprocess pair tables and/or OSM tile directories into out_dir (staged). Returns the manifest."""
    specs, extra = gather(sources)
    return item_job.run_local(out_dir=out_dir, progress=progress, overwrite=overwrite, unit="pair",
                              **_job(specs, extra, cfg))


def run_beam(sources, out_dir, cfg=PairPreprocessConfig(), pipeline_options=None):
    specs, extra = gather(sources)
    return item_job.run_beam(out_dir=out_dir, pipeline_options=pipeline_options, **_job(specs, extra, cfg))


def bundled(out_dir):
    """The bundled demo pairs (OSM-captioned tiles, Sentinel-2 and Landsat 8 patches) preprocessed into out_dir
    once (reused when its manifest exists)."""
    from geolink_jax import samples

    out_dir = pathlib.Path(out_dir)
    if not (out_dir / outputs.MANIFEST).exists():
        run_local([samples.OSM_TILES_DIR, samples.DOFA_CLIP_DIR / "multispectral.csv"], out_dir,
                  progress=False, overwrite=True)
    return out_dir
