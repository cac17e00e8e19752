"""What an image–caption pair is before it becomes a record: its spec, the sensors whose band wavelengths a table
may name, and the errors.jsonl row a bad pair is reported with (shared by the table reader and the OSM captioner)."""

import dataclasses

RGB = (0.665, 0.56, 0.49)
# central wavelengths (µm) by band, in file order
SENSORS = {
    "rgb": RGB,
    "sentinel2_l1c": (0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.375, 1.61, 2.19),
    "sentinel2_l2a": (0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.61, 2.19),
    "landsat8_oli": (0.443, 0.482, 0.561, 0.655, 0.865, 1.609, 2.201),  # B1–B7
    "sentinel1": (5.405e4, 5.405e4),  # C band VV, VH
}
BY_COUNT = {13: "sentinel2_l1c", 12: "sentinel2_l2a", 7: "landsat8_oli", 3: "rgb", 2: "sentinel1"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")



@dataclasses.dataclass(frozen=True)
class PairSpec:
    index: int
    pair_id: str
    path: str
    caption: str
    wavelengths: tuple | None  # None: from the file (RGB for PNG/JPEG, BY_COUNT for rasters)
    source: str
    window: tuple | None = None  # (x0, y0, x1, y1) pixels of a crop
    row: str = ""


def problem(pair_id, reason, file="", detail="", severity="error"):
    """One errors.jsonl row about a pair."""
    return {"tile_id": pair_id, "severity": severity, "reason": reason, "file": str(file), "detail": detail}
