"""Node positions of spec §1.1/§2.4, against a plain per-polygon re-derivation of the reference algorithm."""
import math

import numpy as np
import pytest
import shapely
from conftest import load_sample_layers
from shapely.geometry import LineString, Point, Polygon

from geolink_jax import samples
from geolink_jax.osm import positions as pos


def reference_points_around_center(poly, draws):
    """generate_points_around_center(poly, 3) as spec §2.4 states it, one polygon, given the 3 uniform draws."""
    c = poly.centroid
    d = [math.dist((c.x, c.y), v) for v in poly.exterior.coords]
    r_max, r_min = max(d) / 2, min(d) / 2
    out = []
    for k in range(3):
        theta = math.radians(120 * k)
        r = r_min + draws[k] * (r_max - r_min)
        chosen = None
        for rr in [r] + list(np.linspace(r, 0, 10)):
            p = Point(c.x + rr * math.cos(theta), c.y + rr * math.sin(theta))
            if poly.contains(p):
                chosen = (p.x, p.y)
                break
        if chosen is None:
            chosen = (c.x + r_min / 100 * math.cos(theta), c.y + r_min / 100 * math.sin(theta))
        out.append(chosen)
    return np.array(out + [(c.x, c.y)])


C_SHAPE = Polygon([(0, 0), (10, 0), (10, 2), (2, 2), (2, 8), (10, 8), (10, 10), (0, 10)])  # centroid outside


@pytest.mark.parametrize("name", samples.osm_tile_names())
def test_polygon_points_match_reference_algorithm(name):
    layers, bbox = load_sample_layers(name)
    polys = list(layers["polygon"].geoms) + [C_SHAPE]
    got = pos.polygon_sample_points(polys, pos.tile_rng(7, name))
    draws = pos.tile_rng(7, name).random((len(polys), 3))
    for n, poly in enumerate(polys):
        np.testing.assert_allclose(got[n], reference_points_around_center(poly, draws[n]), rtol=0, atol=1e-12)


def test_polygon_points_properties():
    polys = [shapely.box(0, 0, 4, 2), C_SHAPE, Polygon([(0, 0), (3, 0), (0, 3)])]
    pts = pos.polygon_sample_points(polys, pos.tile_rng(0, "t"))
    assert pts.shape == (3, 4, 2)
    for poly, p in zip(polys, pts):
        np.testing.assert_allclose(p[3], [poly.centroid.x, poly.centroid.y])
        for k in range(3):  # each sample point lies on its ray: 0°, 120°, 240°
            v = p[k] - p[3]
            assert math.isclose(math.atan2(v[1], v[0]) % (2 * math.pi), math.radians(120 * k), abs_tol=1e-9)
    assert all(shapely.contains_xy(polys[0], *pts[0, k]) for k in range(3))
    assert not shapely.contains_xy(C_SHAPE, *C_SHAPE.centroid.coords[0])


def test_polygon_points_reproducible_per_tile():
    polys = [Polygon([(0, 0), (5, 0), (4, 3), (0, 2)])]  # unequal vertex distances: the draw matters
    a = pos.polygon_sample_points(polys, pos.tile_rng(0, "tile_a"))
    np.testing.assert_array_equal(a, pos.polygon_sample_points(polys, pos.tile_rng(0, "tile_a")))
    assert not np.array_equal(a, pos.polygon_sample_points(polys, pos.tile_rng(0, "tile_b")))
    assert not np.array_equal(a, pos.polygon_sample_points(polys, pos.tile_rng(1, "tile_a")))


def test_normalisation_is_top_down():
    bbox = (10.0, 50.0, 12.0, 51.0)
    np.testing.assert_allclose(pos.normalise([[10, 51], [12, 50], [11, 50.25]], bbox),
                               [[0, 0], [1, 1], [0.5, 0.75]])


def test_line_and_point_positions():
    bbox = (0.0, 0.0, 4.0, 2.0)
    line = LineString([(0, 2), (2, 2), (4, 0)])
    got = pos.line_positions([line], bbox)
    c = line.centroid
    np.testing.assert_allclose(got, [[c.x / 4, 1 - c.y / 2, 0, 0, 1, 1]], rtol=1e-6)
    np.testing.assert_allclose(pos.point_positions([Point(1, 0.5)], bbox), [[0.25, 0.75]])
    assert pos.line_positions([], bbox).shape == (0, 6) and pos.point_positions([], bbox).shape == (0, 2)


@pytest.mark.parametrize("name", samples.osm_tile_names())
def test_positions_of_clipped_real_tiles_are_in_unit_square(name):
    layers, bbox = load_sample_layers(name)
    for kind, fn in (("line", pos.line_positions), ("point", pos.point_positions)):
        p = fn(layers[kind].geoms, bbox)
        assert p.shape[0] == len(layers[kind])
        assert (p >= -1e-6).all() and (p <= 1 + 1e-6).all()
    p = pos.polygon_positions(layers["polygon"].geoms, bbox, pos.tile_rng(0, name))
    assert ((p[:, 6:] >= 0) & (p[:, 6:] <= 1)).all()  # centroids of clipped polygons lie in the tile
