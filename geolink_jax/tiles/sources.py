"""Finding tiles on disk and reading their image, footprint and OSM vectors.

A tile is an image plus its footprint and vectors:
- image: JPG/PNG with a sidecar `<stem>.json` holding `bbox_west_south_east_north` (optional `crs`, default
  EPSG:4326), or a georeferenced GeoTIFF (`.tif`/`.tiff`, any CRS; a sidecar, if present, must agree with it);
- vectors: `<stem>_polygon.*`, `<stem>_line.*`, `<stem>_point.*` (any of them) or one mixed `<stem>.<ext>`, in any
  format GeoPandas reads (GeoJSON, GPKG, Shapefile, FlatGeobuf), with a `label` column of `key:value;…` tags;
  or features taken from an OSM PBF (see `osm_pbf.py`);
- downstream tiles in the UFZ layout (`img/<name>.png`, `graph/<name>.npz`, optional `label/<name>.png`) carry a
  precomputed graph instead of vectors.

Read failures raise `TileError` naming the file and the problem.
"""
import dataclasses
import io
import json
import math
import os
import pathlib

import numpy as np

from geolink_jax.data import image_rule

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
VECTOR_SUFFIXES = (".geojson", ".gpkg", ".shp", ".fgb")
LAYER_SUFFIXES = ("_polygon", "_polygons", "_line", "_lines", "_polyline", "_point", "_points")


class TileError(Exception):
    """A problem that stops one tile from being written: carries the file and a reason for the errors report."""

    def __init__(self, reason, file="", detail=""):
        super().__init__(f"{file}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason, self.file, self.detail = reason, str(file), detail


@dataclasses.dataclass(frozen=True)
class TileSpec:
    """Where one tile's inputs are. `index` is the tile's position in the job (fixes shard order)."""

    tile_id: str
    image: str
    index: int = 0
    bbox_file: str | None = None
    vectors: tuple = ()
    graph_npz: str | None = None
    label_image: str | None = None
    orphan: bool = False  # vector files with no image beside them: reported as a failed tile


@dataclasses.dataclass
class TileImage:
    """Encoded image bytes, its format, pixel size and footprint (bbox in `crs`); `source`: how a raster that was
    not 8-bit RGB became one (`image_rule.to_rgb8`'s meta), None for images kept as given."""

    data: bytes
    format: str
    height: int
    width: int
    bbox: tuple
    crs: object  # pyproj.CRS
    source: dict | None = None


def discover_tiles(root):
    """All tiles under `root` (recursive), sorted by path, indexed in that order → [TileSpec]."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: tile directory not found")
    if (root / "img").is_dir() and (root / "graph").is_dir():
        return _discover_graph_layout(root)
    specs = []
    for image in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        stem, folder = image.stem, image.parent
        vectors = []
        for f in sorted(folder.iterdir()):
            if f.suffix.lower() not in VECTOR_SUFFIXES or not f.name.startswith(stem):
                continue
            rest = f.name[len(stem):-len(f.suffix)]
            if rest == "" or rest.lower() in LAYER_SUFFIXES:
                vectors.append(str(f))
        sidecar = folder / f"{stem}.json"
        specs.append(TileSpec(tile_id=stem, image=str(image), index=len(specs),
                              bbox_file=str(sidecar) if sidecar.exists() else None, vectors=tuple(vectors)))
    # vector files no image claimed: one failed tile per (folder, stem), so that no input goes unreported
    claimed = {v for spec in specs for v in spec.vectors}
    orphans = {}
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in VECTOR_SUFFIXES and p.is_file()):
        if str(f) in claimed:
            continue
        stem = f.stem
        for layer in LAYER_SUFFIXES:
            if stem.lower().endswith(layer):
                stem = stem[: -len(layer)]
        orphans.setdefault((f.parent, stem), []).append(str(f))
    for (folder, stem), files in orphans.items():
        specs.append(TileSpec(tile_id=stem, image=str(folder / stem), index=len(specs), vectors=tuple(files),
                              orphan=True))
    return specs


def _discover_graph_layout(root):
    specs = []
    for graph in sorted((root / "graph").glob("*.npz")):
        images = [root / "img" / f"{graph.stem}{s}" for s in IMAGE_SUFFIXES]
        # none there: the report names the pattern looked for, not one guessed extension
        image = next((p for p in images if p.exists()), root / "img" / f"{graph.stem}.{{jpg,jpeg,png,tif,tiff}}")
        label = root / "label" / f"{graph.stem}.png"
        specs.append(TileSpec(tile_id=graph.stem, image=str(image), index=len(specs), graph_npz=str(graph),
                              label_image=str(label) if label.exists() else None))
    return specs


def read_bbox_sidecar(path):
    """Sidecar JSON → (bbox tuple, CRS). Raises TileError on a malformed or impossible bbox."""
    import pyproj

    try:
        with open(path) as f:
            meta = json.load(f)
        bbox = meta.get("bbox_west_south_east_north", meta.get("bbox"))
        bbox = tuple(float(v) for v in bbox)
        crs = pyproj.CRS.from_user_input(meta.get("crs", "EPSG:4326"))
    except pyproj.exceptions.CRSError as e:
        raise TileError("unknown CRS in bbox sidecar", path, str(e)) from e
    except (OSError, ValueError, TypeError) as e:
        raise TileError("unreadable bbox sidecar", path, str(e)) from e
    if len(bbox) != 4:
        raise TileError("bbox must have 4 numbers (west, south, east, north)", path, str(bbox))
    check_bbox(bbox, crs, path)
    return bbox, crs


def check_bbox(bbox, crs, file):
    west, south, east, north = bbox
    if not all(math.isfinite(v) for v in bbox):
        raise TileError("bbox has NaN or infinite coordinates", file, str(bbox))
    if not (west < east and south < north):
        raise TileError("bbox is empty or inverted (need west < east, south < north)", file, str(bbox))
    if crs.is_geographic and not (-180 <= west and east <= 180 and -90 <= south and north <= 90):
        raise TileError("bbox outside lon/lat range", file, str(bbox))


def ground_aspect(bbox, crs):
    """Width/height of the bbox on the ground (metres-proportional)."""
    west, south, east, north = bbox
    if crs.is_geographic:
        return (east - west) * math.cos(math.radians((south + north) / 2)) / (north - south)
    return (east - west) / (north - south)


def read_image(spec, aspect_tolerance=0.25, rule=image_rule.ImageRule()):
    """Read the tile image and footprint → TileImage, 8-bit RGB by `rule` (`image_rule`). Raises TileError
    (unreadable image, unknown CRS, bbox that does not match the raster, a raster the rule cannot convert)."""
    path = spec.image
    if not os.path.exists(path):
        raise TileError("image file missing", path)
    if path.lower().endswith((".tif", ".tiff")):
        image = _read_geotiff(path, rule)
        if spec.bbox_file:
            bbox, crs = read_bbox_sidecar(spec.bbox_file)
            if not crs.equals(image.crs) or not np.allclose(bbox, image.bbox, rtol=0,
                                                            atol=_pixel_tolerance(image)):
                raise TileError("bbox sidecar does not match the GeoTIFF georeferencing", spec.bbox_file,
                                f"sidecar {bbox} {crs.to_string()} vs raster {image.bbox} {image.crs.to_string()}")
        return image
    try:
        from PIL import Image

        with open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.load()  # decodes fully: catches truncated or corrupt files
            width, height = im.size
            # 8-bit RGB/grey/palette images under the default rule are stored as given (a JPEG stays a JPEG)
            pixels = None if im.mode in ("RGB", "L", "P") and rule == image_rule.ImageRule() else np.asarray(im)
    except Exception as e:  # PIL raises many types for corrupt data
        raise TileError("unreadable image", path, f"{type(e).__name__}: {e}") from e
    if fmt not in ("JPEG", "PNG"):
        raise TileError(f"unsupported image format {fmt}", path)
    source = None
    if pixels is not None:
        data, source = _rgb8_png(pixels, None, rule, None, path)
        fmt = "PNG"
    if spec.graph_npz and not spec.bbox_file:
        import pyproj  # downstream tiles with a precomputed graph: footprint unknown, image-unit bbox

        return TileImage(data, fmt.lower(), height, width, (0.0, 0.0, 1.0, 1.0), pyproj.CRS("EPSG:4326"), source)
    if not spec.bbox_file:
        raise TileError("no bbox sidecar (<stem>.json) for a non-georeferenced image", path)
    bbox, crs = read_bbox_sidecar(spec.bbox_file)
    ground, aspect = ground_aspect(bbox, crs), width / height
    if abs(math.log(ground / aspect)) > math.log1p(aspect_tolerance):
        raise TileError("bbox does not match the raster: aspect ratios differ", spec.bbox_file,
                        f"bbox ground aspect {ground:.3f} vs image {width}x{height} = {aspect:.3f} "
                        f"(tolerance {aspect_tolerance:.0%})")
    return TileImage(data, fmt.lower(), height, width, bbox, crs, source)


def _pixel_tolerance(image):
    west, south, east, north = image.bbox
    return max((east - west) / image.width, (north - south) / image.height)


def _rgb8_png(pixels, names, rule, nodata, path):
    """A raster [H, W(, C)] → (PNG bytes of its 8-bit RGB by `rule`, the rule's meta); TileError if it does not fit."""
    from PIL import Image

    try:
        rgb, meta = image_rule.to_rgb8(pixels, names, rule, nodata)
    except image_rule.ImageRuleError as e:
        raise TileError("image does not fit the image rule", path, str(e)) from None
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue(), meta


def _read_geotiff(path, rule):
    import rasterio

    try:
        with rasterio.open(path) as src:
            arr = src.read()  # [bands, H, W]
            crs, bounds = src.crs, tuple(src.bounds)
            names, nodata = src.descriptions, src.nodata
    except Exception as e:
        raise TileError("unreadable image", path, f"{type(e).__name__}: {e}") from e
    if crs is None:
        raise TileError("unknown CRS: GeoTIFF has no georeferencing CRS", path)
    import pyproj

    crs = pyproj.CRS.from_user_input(crs.to_wkt())
    check_bbox(bounds, crs, path)
    data, source = _rgb8_png(np.moveaxis(arr, 0, -1), names, rule, nodata, path)
    return TileImage(data, "png", arr.shape[1], arr.shape[2], bounds, crs, source)


def _decode_lossy(text):
    """A string read as latin-1 → its UTF-8 reading, invalid bytes as U+FFFD (valid UTF-8 stays as it was)."""
    return text.encode("latin-1").decode("utf-8", errors="replace") if isinstance(text, str) else text


def read_vectors(paths, crs, recoded=None):
    """Vector files → (geoms, labels, sources) reprojected to `crs`. Raises TileError per bad file.

    Returns also the names of files that were empty (the tile becomes OSM-sparse, reported as a note). A file
    whose text is not valid UTF-8 is read with the invalid bytes replaced (U+FFFD) and its path appended to
    `recoded` (reported as a warning), instead of losing the whole tile.
    """
    import geopandas as gpd

    geoms, labels, sources, empty = [], [], [], []
    for path in paths:
        try:
            try:
                gdf = gpd.read_file(path)
            except UnicodeDecodeError:
                gdf = gpd.read_file(path, encoding="latin-1")  # every byte decodes; re-decoded as UTF-8 below
                for column in gdf.columns.drop(gdf.geometry.name):
                    gdf[column] = gdf[column].map(_decode_lossy)
                if recoded is not None:
                    recoded.append(path)
        except Exception as e:
            raise TileError("unreadable vector file", path, f"{type(e).__name__}: {e}") from e
        if len(gdf) == 0:
            empty.append(path)
            continue
        if "label" not in gdf.columns:
            raise TileError("vector file has no 'label' column", path, f"columns: {list(gdf.columns)}")
        if gdf.crs is None:
            raise TileError("unknown CRS: vector file has no CRS", path)
        if not gdf.crs.equals(crs):
            gdf = gdf.to_crs(crs)
        name = os.path.basename(path)
        geoms += list(gdf.geometry.values)
        labels += ["" if lbl is None or (isinstance(lbl, float) and math.isnan(lbl)) else str(lbl)
                   for lbl in gdf["label"]]
        sources += [name] * len(gdf)
    return geoms, labels, sources, empty
