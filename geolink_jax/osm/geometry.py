"""Cleaning OSM geometries for one tile: sort by dimension, drop NaN coordinates, repair or skip invalid
geometries, clip to the tile and explode multi-part geometries (spec §2.1).

Every dropped or changed feature is reported as a `Problem`, never silently.
"""
import dataclasses

import numpy as np
import shapely

KIND_OF_DIMENSION = {0: "point", 1: "line", 2: "polygon"}


@dataclasses.dataclass
class Problem:
    """One entry of the errors report. severity: 'error' (tile not written), 'warning' (feature repaired or
    dropped, tile written), 'note' (expected condition worth counting, e.g. an empty layer)."""

    severity: str
    reason: str
    file: str = ""
    detail: str = ""

    def as_dict(self, tile_id):
        return {"tile_id": tile_id, **dataclasses.asdict(self)}


@dataclasses.dataclass
class Layer:
    """Single-part, valid geometries of one node type with their labels (parallel arrays)."""

    geoms: np.ndarray  # object [N] of shapely geometries
    labels: list

    @staticmethod
    def empty():
        return Layer(np.zeros(0, dtype=object), [])

    def __len__(self):
        return len(self.geoms)


def _parts(geoms):
    """Explode multi-part geometries and collections into single parts → (parts, index of the source feature)."""
    parts, idx = shapely.get_parts(geoms, return_index=True)
    # get_parts leaves nested collections one level deep; a second pass flattens GeometryCollections of multis.
    nested = shapely.get_type_id(parts) >= 4
    if nested.any():
        sub, sub_idx = shapely.get_parts(parts[nested], return_index=True)
        keep = np.flatnonzero(~nested)
        parts = np.concatenate([parts[keep], sub])
        idx = np.concatenate([idx[keep], idx[np.flatnonzero(nested)][sub_idx]])
        order = np.argsort(idx, kind="stable")
        parts, idx = parts[order], idx[order]
    return parts, idx


def clean_features(geoms, labels, sources, bbox, invalid="repair"):
    """Raw features of a tile (any geometry types, tile CRS) → ({kind: Layer}, [Problem]).

    geoms: shapely geometries; labels: tag label strings; sources: file name per feature (for the report);
    bbox: (west, south, east, north) in the same CRS; invalid: 'repair' (shapely.make_valid) or 'skip'.
    """
    problems = []
    geoms = np.asarray(list(geoms), dtype=object)
    labels, sources = list(labels), list(sources)
    keep = np.ones(len(geoms), bool)
    for n, g in enumerate(geoms):
        if g is None or shapely.is_empty(g):
            problems.append(Problem("warning", "empty geometry dropped", sources[n], f"feature {n}"))
            keep[n] = False
        elif np.isnan(shapely.get_coordinates(g)).any():
            problems.append(Problem("warning", "NaN coordinates: feature dropped", sources[n], f"feature {n}"))
            keep[n] = False
    # A feature's node type is its own dimension (a GeometryCollection from a mixed file: each member's), fixed
    # before repair and clipping so that degenerate pieces (a polygon clipped to a sliver line) do not change type.
    kind_dim = np.where(shapely.get_type_id(np.where(keep, geoms, None)) == 7, -1,
                        shapely.get_dimensions(np.where(keep, geoms, None)))
    bad = keep & ~shapely.is_valid(np.where(keep, geoms, None))
    for n in np.flatnonzero(bad):
        why = shapely.is_valid_reason(geoms[n])
        if invalid == "repair":
            geoms[n] = shapely.make_valid(geoms[n])
            problems.append(Problem("warning", "invalid geometry repaired with make_valid", sources[n],
                                    f"feature {n}: {why}"))
        else:
            keep[n] = False
            problems.append(Problem("warning", "invalid geometry skipped", sources[n], f"feature {n}: {why}"))
    geoms, kind_dim = geoms[keep], kind_dim[keep]
    labels = [lbl for lbl, k in zip(labels, keep) if k]
    kept_sources = [src for src, k in zip(sources, keep) if k]

    # Every geometry is intersected with the tile, as the reference's get_current_shp* do: the overlay also nodes
    # a self-intersecting line into parts, each its own node.
    clipped = shapely.intersection(geoms, shapely.box(*bbox))
    parts, idx = _parts(clipped)
    dims = shapely.get_dimensions(parts)
    ok = ~shapely.is_empty(parts) & ((kind_dim[idx] == -1) | (dims == kind_dim[idx]))
    parts, idx, dims = parts[ok], idx[ok], dims[ok]
    # every dropped input is reported: features with no part left inside the tile, counted per file
    outside = {}
    for i in sorted(set(range(len(geoms))) - set(idx.tolist())):
        outside[kept_sources[i]] = outside.get(kept_sources[i], 0) + 1
    problems += [Problem("note", "features outside the tile dropped", src, f"{count} feature(s)")
                 for src, count in outside.items()]
    labels = [labels[i] for i in idx]
    layers = {}
    for dim, kind in KIND_OF_DIMENSION.items():
        sel = np.flatnonzero(dims == dim)
        layers[kind] = Layer(parts[sel], [labels[i] for i in sel])
    return layers, problems
