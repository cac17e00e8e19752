"""Node positions normalised to the tile (spec §1.1, §2.4): x = (X−west)/width, y = 1 − (Y−south)/height.

y runs top-down like an image row. Polygons get 4 points (3 sample points at 0°/120°/240° around the centroid, then
the centroid), lines 3 (centroid, first vertex, last vertex), points 1.
"""
import zlib

import numpy as np
import shapely

ANGLES = np.deg2rad([0.0, 120.0, 240.0])
_FALLBACK_STEPS = 10


def normalise(xy, bbox):
    """xy [..., 2] in the tile CRS, bbox (west, south, east, north) → float64 [..., 2] in tile units."""
    west, south, east, north = bbox
    xy = np.asarray(xy, np.float64)
    return np.stack([(xy[..., 0] - west) / (east - west), 1.0 - (xy[..., 1] - south) / (north - south)], -1)


def tile_rng(seed, tile_id):
    """The per-tile generator for polygon sample points: reproducible, independent of worker and order."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(tile_id.encode())]))


def polygon_sample_points(polygons, rng):
    """Reference `generate_points_around_center(poly, 3)` for all polygons at once → float64 [N, 4, 2].

    r_min/r_max = half the min/max distance from the centroid to the exterior vertices; r ~ U(r_min, r_max) per
    angle (drawn row-major: polygon, then angle). A candidate is kept if the polygon contains it; otherwise the
    first contained point of linspace(r, 0, 10) along the same ray; otherwise c + (r_min/100)·(cos θ, sin θ).
    """
    polygons = np.asarray(polygons, dtype=object)
    n = len(polygons)
    if n == 0:
        return np.zeros((0, 4, 2))
    centre = shapely.get_coordinates(shapely.centroid(polygons))  # [N, 2]
    ext_xy, ext_idx = shapely.get_coordinates(shapely.get_exterior_ring(polygons), return_index=True)
    dist = np.linalg.norm(ext_xy - centre[ext_idx], axis=1)
    r_max = np.full(n, -np.inf)
    r_min = np.full(n, np.inf)
    np.maximum.at(r_max, ext_idx, dist)
    np.minimum.at(r_min, ext_idx, dist)
    r_max, r_min = r_max / 2, r_min / 2
    r = r_min[:, None] + rng.random((n, 3)) * (r_max - r_min)[:, None]  # [N, 3]
    # Candidate radii along each ray: r itself, then linspace(r, 0, 10).
    radii = np.concatenate([r[..., None], np.linspace(r, 0.0, _FALLBACK_STEPS, axis=-1)], -1)  # [N, 3, 11]
    cand = centre[:, None, None, :] + radii[..., None] * np.stack([np.cos(ANGLES), np.sin(ANGLES)], -1)[None, :, None]
    inside = shapely.contains_xy(polygons[:, None, None], cand[..., 0], cand[..., 1])  # [N, 3, 11]
    first = inside.argmax(-1)
    chosen = np.take_along_axis(cand, first[..., None, None], axis=2)[:, :, 0]  # [N, 3, 2]
    fallback = centre[:, None] + (r_min / 100)[:, None, None] * np.stack([np.cos(ANGLES), np.sin(ANGLES)], -1)
    pts = np.where(inside.any(-1)[..., None], chosen, fallback)
    return np.concatenate([pts, centre[:, None]], axis=1)


def polygon_positions(polygons, bbox, rng):
    """float32 [N, 8]: (x, y) of P0(0°), P1(120°), P2(240°), centroid."""
    return normalise(polygon_sample_points(polygons, rng), bbox).reshape(-1, 8).astype(np.float32)


def line_positions(lines, bbox):
    """float32 [N, 6]: (x, y) of centroid, first vertex, last vertex."""
    lines = np.asarray(lines, dtype=object)
    if len(lines) == 0:
        return np.zeros((0, 6), np.float32)
    pts = np.stack([
        shapely.get_coordinates(shapely.centroid(lines)),
        shapely.get_coordinates(shapely.get_point(lines, 0)),
        shapely.get_coordinates(shapely.get_point(lines, -1)),
    ], axis=1)
    return normalise(pts, bbox).reshape(-1, 6).astype(np.float32)


def point_positions(points, bbox):
    """float32 [N, 2]."""
    points = np.asarray(points, dtype=object)
    if len(points) == 0:
        return np.zeros((0, 2), np.float32)
    return normalise(shapely.get_coordinates(points), bbox).astype(np.float32)
