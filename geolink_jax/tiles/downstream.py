"""Tiles for downstream use, from any of the three places they live, as arrays ready for the model.

`load_tiles(path)` accepts a preprocessed shard directory (manifest.json + ArrayRecord shards), a UFZ-layout
directory (img/, graph/*.npz, optional label/) or a raw tile directory (images + bbox sidecars + OSM vectors; graphs
built with `encoder`). Every tile becomes a `Tile`: its id, footprint, image resized to the model's size with
ImageNet normalisation (the reference's downstream transform: no augmentation), its graph, and its label map if it
has one. `batches` pads the graphs to one static budget so that every batch has the same shapes (one compile).
"""

import dataclasses
import io
import pathlib

import numpy as np
from PIL import Image

from geolink_jax.data import record_format
from geolink_jax.tiles.augment import resize_only
from geolink_jax.tiles.graph_batch import GraphBudget, pad_graphs
from geolink_jax.tiles.pipeline import tile_graph_from_record

IGNORE = 255


@dataclasses.dataclass
class Tile:
    tile_id: str
    bbox_lonlat: tuple | None  # (west, south, east, north) in EPSG:4326; None when the footprint is unknown
    image: np.ndarray  # float32 [S, S, 3], ImageNet-normalised
    graph: object  # TileGraph
    label: np.ndarray | None  # int32 [S, S]; values outside [0, num_classes) set to IGNORE


def remap_labels(label, num_classes):
    """Class ids outside [0, num_classes) → IGNORE (the UFZ maps' 9 and 255, spec §1.3)."""
    label = np.asarray(label).astype(np.int32)
    return np.where((label >= 0) & (label < num_classes), label, IGNORE).astype(np.int32)


def tile_from_record(record, image_size, num_classes=9):
    """A decoded tile record → Tile (label resized with nearest neighbour, never interpolated)."""
    label = None
    if record.get("label_image") is not None:
        lab = Image.open(io.BytesIO(record["label_image"]))
        if lab.size != (image_size, image_size):
            lab = lab.resize((image_size, image_size), Image.NEAREST)
        label = remap_labels(np.asarray(lab), num_classes)
    meta = record.get("meta") or {}
    bbox = None if meta.get("footprint") == "unknown" else tuple(float(v) for v in record["bbox_lonlat"])
    return Tile(record.get("tile_id", "?"), bbox, resize_only(record_format.open_image(record), image_size),
                tile_graph_from_record(record), label)


def _records(path, encoder):
    from geolink_jax.data import outputs
    from geolink_jax.tiles import job as preprocess
    from geolink_jax.tiles import sources as tile_sources

    path = pathlib.Path(path)
    if (path / outputs.MANIFEST).exists():
        return preprocess.read_records(path)
    specs = tile_sources.discover_tiles(path)
    if not specs:
        raise FileNotFoundError(f"{path}: no tiles (neither a preprocessed directory with "
                                f"{outputs.MANIFEST}, a UFZ layout, nor image tiles)")
    cfg = preprocess.PreprocessConfig(encoder=encoder)
    records = []
    for spec in specs:
        result = preprocess.process_tile(spec, cfg)
        if result.record is None:
            problems = "; ".join(f"{p['file']}: {p['reason']}" for p in result.summary["problems"])
            raise ValueError(f"{spec.image}: tile could not be read ({problems})")
        records.append(record_format.decode(result.record))
    return records


def load_tiles(path, image_size, encoder="e5", num_classes=9):
    """Every tile under `path` → list[Tile] (see the module docstring for what `path` may be)."""
    return [tile_from_record(r, image_size, num_classes) for r in _records(path, encoder)]


def batches(tiles, batch_size, budget=None, rng=None):
    """Yield (tiles, images [B, S, S, 3], GraphBatch of numpy arrays, labels [B, S, S] or None) with one static
    budget (default: covering every tile). The last batch is smaller, never padded: with the reference's batch-wide
    graph LayerNorm (spec §3.3) a tile's outputs depend on its batch mates, so padding rows would change the real
    tiles' results (one more compilation for the last batch's shape is the price)."""
    budget = budget or GraphBudget.covering([t.graph for t in tiles])
    for start in range(0, len(tiles), batch_size):
        chunk = full = tiles[start:start + batch_size]
        images = np.stack([t.image for t in full])
        graphs, _ = pad_graphs([t.graph for t in full], budget, rng=rng, names=[t.tile_id for t in full])
        labels = np.stack([t.label for t in full]) if all(t.label is not None for t in full) else None
        yield chunk, images, graphs, labels
