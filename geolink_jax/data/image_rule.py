"""The GeoLink image rule: any raster → the 8-bit RGB image the model is trained on, decided once at preprocessing.

GeoLink (and its image-only MAE baseline) sees 8-bit RGB, as the reference's JPEG tiles. A raster that is not
8-bit RGB (a uint16 Sentinel-2 stack, a float reflectance GeoTIFF, a panchromatic band, RGBA) goes through:

1. **band selection** — `bands`: 1-based band indices or band names (the raster's band descriptions, e.g.
   `B04,B03,B02`), one band (repeated to grey RGB) or three. Default: the first three bands, or the single band of a
   one-band raster; any other band count without `bands` is an error.
2. **stretch to 8 bits**, per selected band:
   - `auto` (default): 8-bit input unchanged; any other dtype `percentile:2,98`;
   - `percentile:LO,HI`: this tile's LO–HI percentiles of the band (nodata and NaN left out) → 0–255;
   - `range:MIN,MAX` (every band) or `range:MIN1,MAX1,MIN2,MAX2,MIN3,MAX3` (per band): fixed ranges → 0–255;
   - `none`: values kept; only for input that already lies in 0–255.
   Values outside the range saturate; nodata and NaN pixels become 0.

The rule is recorded in the manifest (the preprocessing config) and each record's `meta.image` gives the source
dtype and bands and the stretch bounds applied, so a tile's pixels can be traced back to the raster's values. A
raster that does not fit the rule is a clear error at preprocessing (the tile is reported and not written), never
a crash or silently wrapped values at training. Families that take raw multispectral input keep the raw bands and
do not use this module.
"""
import dataclasses

import numpy as np


class ImageRuleError(ValueError):
    """A raster that the image rule cannot turn into 8-bit RGB (the message says why and what to pass)."""


@dataclasses.dataclass(frozen=True)
class ImageRule:
    bands: str = ""        # "" (default selection) | "4,3,2" | "B04,B03,B02" | "1"
    stretch: str = "auto"  # auto | percentile:LO,HI | range:MIN,MAX[,...] | none

    def __post_init__(self):
        self.selection()  # a bad spec fails when the rule is made (at the command line), not per tile
        self.stretch_spec()

    def selection(self):
        """`bands` → a tuple of ints (1-based) and/or names; () for the default."""
        items = tuple(b.strip() for b in self.bands.split(",") if b.strip())
        if len(items) not in (0, 1, 3):
            raise ValueError(f"--bands {self.bands}: give one band (grey) or three (RGB), not {len(items)}")
        out = tuple(int(b) if b.isdigit() else b for b in items)
        if any(isinstance(b, int) and b < 1 for b in out):
            raise ValueError(f"--bands {self.bands}: band indices start at 1")
        return out

    def stretch_spec(self):
        """`stretch` → (kind, numbers)."""
        return parse_stretch(self.stretch, range_pairs=(1, 3))


def parse_stretch(text, range_pairs=None):
    """A stretch spec → (kind, numbers): auto | none | percentile:LO,HI | range:MIN,MAX[,MIN,MAX …]. `range_pairs`:
    the allowed numbers of MIN,MAX pairs (None: any). A bad spec is a ValueError saying what is expected."""
    kind, _, args = text.partition(":")
    try:
        numbers = tuple(float(x) for x in args.split(",")) if args else ()
    except ValueError:
        numbers = None
    ok = {"auto": numbers == (), "none": numbers == (),
          "percentile": numbers is not None and len(numbers) == 2 and 0 <= numbers[0] < numbers[1] <= 100,
          "range": numbers is not None and len(numbers) >= 2 and len(numbers) % 2 == 0
          and (range_pairs is None or len(numbers) // 2 in range_pairs)
          and all(lo < hi for lo, hi in zip(numbers[::2], numbers[1::2]))}
    if not ok.get(kind, False):
        ranges = ("range:MIN,MAX (every band) or range:MIN1,MAX1,MIN2,MAX2,MIN3,MAX3" if range_pairs == (1, 3)
                  else "range:MIN,MAX (every band) or one MIN,MAX per band")
        raise ValueError(f"--stretch {text}: expected auto, none, percentile:LO,HI (0 <= LO < HI <= 100) "
                         f"or {ranges} (MIN < MAX)")
    return kind, numbers


def select_bands(array, names, rule):
    """[H, W, C] raster and its C band names (None where unnamed) → [H, W, 1 | 3] and the chosen 1-based indices."""
    count = array.shape[-1]
    wanted = rule.selection()
    if not wanted:
        if count == 1 or count >= 3:
            wanted = (1,) if count == 1 else (1, 2, 3)
        else:
            raise ImageRuleError(f"{count} bands: give --bands (one band for grey or three for RGB)")
    indices = []
    for b in wanted:
        if isinstance(b, str):
            if b not in names:
                raise ImageRuleError(f"no band named {b!r} (band names: {', '.join(str(n) for n in names)})")
            b = list(names).index(b) + 1
        if b > count:
            raise ImageRuleError(f"band {b} requested, the raster has {count}")
        indices.append(b)
    return array[..., [i - 1 for i in indices]], tuple(indices)


def to_rgb8(array, names=None, rule=ImageRule(), nodata=None):
    """A raster [H, W, C] (any dtype) → (uint8 [H, W, 3], meta {dtype, bands, stretch, bounds}). Raises
    ImageRuleError when it does not fit the rule."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    names = list(names) if names is not None else [None] * array.shape[-1]
    chosen, indices = select_bands(array, names, rule)
    out, meta = stretch_to_uint8(chosen, rule.stretch_spec(), nodata, indices)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out, meta


def stretch_to_uint8(array, spec, nodata=None, band_ids=None):
    """Every band of [H, W, C] (any dtype) → (uint8 [H, W, C], meta {dtype, bands, stretch, bounds}) by the stretch
    `spec` (`ImageRule.stretch_spec()`; a `range` gives one MIN,MAX for every band or one per band)."""
    array = np.asarray(array)
    band_ids = list(band_ids) if band_ids is not None else list(range(1, array.shape[-1] + 1))
    kind, numbers = spec
    if kind == "auto":
        kind, numbers = ("none", ()) if array.dtype == np.uint8 else ("percentile", (2.0, 98.0))
    if kind == "range" and len(numbers) not in (2, 2 * array.shape[-1]):
        raise ImageRuleError(f"stretch range gives {len(numbers) // 2} MIN,MAX pairs for {array.shape[-1]} bands "
                             "(give one pair for every band or one per band)")
    values = array.astype(np.float64)
    invalid = ~np.isfinite(values)
    if nodata is not None and np.isfinite(nodata):
        invalid |= array == nodata
    bounds = []
    out = np.zeros(values.shape, np.uint8)
    for c in range(values.shape[-1]):
        band, bad = values[..., c], invalid[..., c]
        if kind == "none":
            if bad.any() or (band < 0).any() or (band > 255).any() or (band != np.round(band)).any():
                raise ImageRuleError(f"{array.dtype} values {np.nanmin(band):g}..{np.nanmax(band):g} are not 8-bit "
                                     "integers: give --stretch (e.g. percentile:2,98 or range:MIN,MAX)")
            lo, hi = 0.0, 255.0
        elif kind == "percentile":
            good = band[~bad]
            if good.size == 0:
                raise ImageRuleError(f"band {band_ids[c]} holds only nodata/NaN")
            lo, hi = (float(v) for v in np.percentile(good, numbers))
        else:
            lo, hi = (numbers[:2] if len(numbers) == 2 else numbers[2 * c:2 * c + 2])
        scaled = (band - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(band)
        out[..., c] = np.where(bad, 0, np.clip(np.round(scaled), 0, 255)).astype(np.uint8)
        bounds.append([float(lo), float(hi)])
    return out, dict(dtype=str(array.dtype), bands=[int(b) for b in band_ids], stretch=kind, bounds=bounds)
