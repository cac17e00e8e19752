"""Central wavelengths (µm) of common sensors' bands, in file order: what a raster's bands are when a table or a
task names its sensor instead of listing wavelengths."""

RGB = (0.665, 0.56, 0.49)
SENSORS = {
    "rgb": RGB,
    "sentinel2_l1c": (0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.375, 1.61, 2.19),
    "sentinel2_l2a": (0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19),
    "landsat8_oli": (0.443, 0.482, 0.561, 0.655, 0.865, 1.609, 2.201),  # B1–B7
    "landsat7_etm": (0.483, 0.56, 0.662, 0.835, 1.648, 2.206),  # B1–B5, B7 (no thermal B6)
    "sentinel1": (5.405e4, 5.405e4),  # C band VV, VH
}


OPTICAL_MAX_UM = 30.0  # the longest optical/thermal band (thermal infrared ends near 15 µm)
MICROWAVE_MIN_UM = 2.0e4  # the shortest SAR band in orbit (X band, ~3 cm; Ka ~0.8 cm is not an imaging SAR's)


def check_wavelengths(wavelengths_um):
    """Band wavelengths in µm → the same as floats; ValueError naming the problem where one is not finite, not
    positive, or between 30 µm and 2 cm (no sensor band is: such values are nanometres, e.g. 665 for red)."""
    wl = tuple(float(w) for w in wavelengths_um)
    bad = [w for w in wl if not (w == w and abs(w) != float("inf"))]
    if bad:
        raise ValueError(f"wavelengths {list(wl)}: not finite")
    if any(w <= 0 for w in wl):
        raise ValueError(f"wavelengths {list(wl)}: not positive (µm)")
    if any(OPTICAL_MAX_UM < w < MICROWAVE_MIN_UM for w in wl):
        raise ValueError(f"wavelengths {list(wl)}: between {OPTICAL_MAX_UM:g} µm and 2 cm no sensor band lies; "
                         "these look like nanometres (give micrometres, e.g. 0.665 for red)")
    return wl


def nearest_bands(wavelengths_um, targets_um, tolerance_um=None):
    """For each target wavelength, the index of the nearest band; with `tolerance_um`, None where the nearest is
    farther than that."""
    wl = [float(w) for w in wavelengths_um]
    out = []
    for t in targets_um:
        i = min(range(len(wl)), key=lambda j: abs(wl[j] - t))
        out.append(i if tolerance_um is None or abs(wl[i] - t) <= tolerance_um else None)
    return out
