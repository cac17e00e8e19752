"""What an image–caption pair is before it becomes a record: its spec, the sensors whose band wavelengths a table
may name, and the errors.jsonl row a bad pair is reported with (shared by the table reader and the OSM captioner)."""

import dataclasses

from geolink_jax.data.sensors import RGB, SENSORS  # noqa: F401  (the tables a pair table may name)

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
