"""Spatial relations of spec §2.5: hand-checked cases per relation, the rule table over every DE-9IM string, and
the vectorised builder against the pair-by-pair oracle on real tiles."""
import itertools

import numpy as np
import pytest
import shapely
from conftest import helsinki_layers, load_sample_layers
from shapely.geometry import LineString, Point, box

from geolink_jax import samples
from geolink_jax.osm import relations as rel
from geolink_jax.osm import relations_pairwise as pw


def edge_dict(edges):
    """{(src, dst): one-hot tuple} of an Edges."""
    return {(int(s), int(d)): tuple(a) for (s, d), a in zip(edges.index.T, edges.attr)}


ONE_SAME = {c: tuple(float(c == k) for k in rel.SAMEDIM_ONEHOT) for c in rel.SAMEDIM_ONEHOT}


# --- hand-checked cases -----------------------------------------------------------------------------------------

def test_polygon_pairs_hand_checked():
    a = box(0, 0, 2, 2)
    touching = box(2, 0, 4, 2)     # shares an edge with a
    overlapping = box(1, 1, 3, 3)
    inner = box(0.2, 0.2, 0.6, 0.6)  # a covers inner
    far = box(10, 10, 11, 11)
    e = edge_dict(rel.samedim_edges([a, touching, overlapping, inner, far]))
    # self-loops for every polygon, the far one included
    for i in range(5):
        assert e[(i, i)] == ONE_SAME[rel.SELF]
    assert e[(0, 1)] == e[(1, 0)] == ONE_SAME[rel.TOUCHES]
    assert e[(0, 2)] == e[(2, 0)] == ONE_SAME[rel.OVERLAPS]
    assert e[(0, 3)] == ONE_SAME[rel.COVERS] and e[(3, 0)] == ONE_SAME[rel.COVERED_BY]
    assert not any(4 in k for k in e if k != (4, 4))
    # touching/overlapping/inner among themselves: inner is disjoint from touching and overlapping
    assert (1, 3) not in e and (3, 2) not in e
    assert list(map(tuple, rel.samedim_edges([a, touching, overlapping, inner, far]).index.T)) == sorted(e)


def test_equal_polygons_are_covers_not_equals():
    # spec: "equals" is unreachable; equal geometries match "g_j covers g_i" first → r[i,j]=5, r[j,i]=4
    a, b = box(0, 0, 1, 1), box(0, 0, 1, 1)
    assert shapely.relate(b, a) == "2FFF1FFF2"
    e = edge_dict(rel.samedim_edges([a, b]))
    assert e[(0, 1)] == ONE_SAME[rel.COVERED_BY] and e[(1, 0)] == ONE_SAME[rel.COVERS]


def test_line_pairs_hand_checked():
    x1, x2 = LineString([(0, 0), (2, 2)]), LineString([(0, 2), (2, 0)])
    assert shapely.relate(x2, x1) == "0F1FF0102"
    end = LineString([(2, 2), (3, 5)])                 # touches x1 at its endpoint
    collinear = LineString([(1, 1), (3, 3)])            # partial collinear overlap with x1
    sub = LineString([(0.5, 0.5), (1.5, 1.5)])          # inside x1
    e = edge_dict(rel.samedim_edges([x1, x2, end, collinear, sub]))
    assert e[(0, 1)] == e[(1, 0)] == ONE_SAME[rel.OVERLAPS]        # X-crossing → overlaps (code 3)
    assert e[(0, 2)] == e[(2, 0)] == ONE_SAME[rel.TOUCHES]
    assert e[(0, 3)] == e[(3, 0)] == ONE_SAME[rel.OVERLAPS]
    assert e[(0, 4)] == ONE_SAME[rel.COVERS] and e[(4, 0)] == ONE_SAME[rel.COVERED_BY]


def test_point_line_and_point_polygon_hand_checked():
    line = LineString([(0, 0), (2, 0)])
    on_interior, at_end, off = Point(1, 0), Point(2, 0), Point(1, 1e-7)
    assert shapely.relate(on_interior, line) == "0FFFFF102"
    assert shapely.relate(at_end, line) == "F0FFFF102"
    fwd, rev = rel.point_other_edges([on_interior, at_end, off], [line])
    assert edge_dict(fwd) == {(0, 0): (0.0, 1.0), (1, 0): (1.0, 0.0)}    # [touches, within]
    assert edge_dict(rev) == {(0, 0): (0.0, 1.0), (0, 1): (1.0, 0.0)}    # [touches, contains], reversed
    poly = box(0, 0, 1, 1)
    fwd, rev = rel.point_other_edges([Point(0.5, 0.5), Point(1, 0.5), Point(3, 3)], [poly])
    assert edge_dict(fwd) == {(0, 0): (0.0, 1.0), (1, 0): (1.0, 0.0)}
    assert rev.index.tolist() == [[0, 0], [0, 1]]


def test_line_polygon_hand_checked():
    poly = box(0, 0, 2, 2)
    through = LineString([(-1, 1), (3, 1)])
    inside = LineString([(0.5, 0.5), (1.5, 1.5)])
    inside_touching = LineString([(0, 1), (1, 1)])
    on_boundary = LineString([(0, 0), (2, 0)])
    partly = LineString([(1, 1), (3, 1)])
    outside = LineString([(5, 5), (6, 6)])
    expected_de9im = ["101FF0212", "1FF0FF212", "1FF00F212", "F1FF0F212", "1010F0212"]
    lines = [through, inside, inside_touching, on_boundary, partly, outside]
    assert [shapely.relate(ln, poly) for ln in lines[:5]] == expected_de9im
    fwd, rev = rel.line_polygon_edges(lines, [poly])
    cross, covered, touch = (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)
    assert edge_dict(fwd) == {(0, 0): cross, (1, 0): covered, (2, 0): covered, (3, 0): touch, (4, 0): cross}
    assert edge_dict(rev) == {(d, s): a for (s, d), a in edge_dict(fwd).items()}
    assert rev.index[1].tolist() == [0, 1, 2, 3, 4]   # polygon-major enumeration


def test_point_point_delaunay_and_self_loops():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.4]], float)
    edges, note = rel.point_point_edges(square)
    assert note is None
    n = len(square)
    # self-loops come last, in order, with attribute [1, 0]
    assert edges.index[:, -n:].tolist() == [list(range(n))] * 2
    assert (edges.attr[-n:] == [1, 0]).all() and (edges.attr[:-n] == [0, 1]).all()
    pairs = {tuple(p) for p in edges.index[:, :-n].T}
    assert all((b, a) in pairs for a, b in pairs)                 # both directions
    assert edges.index[:, :-n].T.tolist() == sorted(map(list, pairs))  # sorted unique
    # the centre point is a Delaunay neighbour of all four corners; the square's diagonal is not an edge
    assert {(4, k) for k in range(4)} <= pairs and (0, 2) not in pairs and (1, 3) not in pairs


def test_point_point_small_and_degenerate():
    three, note = rel.point_point_edges(np.array([[0, 0], [1, 0], [0, 1]], float))
    assert note is None and three.index.tolist() == [[0, 1, 2], [0, 1, 2]]
    collinear, note = rel.point_point_edges(np.array([[0, 0], [1, 1], [2, 2], [3, 3]], float))
    assert note is not None and "Delaunay" in note                 # reference prints and skips
    assert collinear.index.tolist() == [[0, 1, 2, 3], [0, 1, 2, 3]]


# --- the rule table over every DE-9IM string --------------------------------------------------------------------

@pytest.fixture(scope="module")
def all_de9im():
    return ["".join(s) for s in itertools.product("F012", repeat=9)]


def test_vectorised_rules_equal_pairwise_rules_on_every_de9im_string(all_de9im):
    t = rel.de9im_matrix(all_de9im)
    r_ij, r_ji = rel.samedim_codes(t)
    assert list(zip(r_ij.tolist(), r_ji.tolist())) == [pw.classify_samedim(s) for s in all_de9im]
    assert rel.point_codes(t).tolist() == [pw.classify_point(s) for s in all_de9im]
    assert rel.line_polygon_codes(t).tolist() == [pw.classify_line_polygon(s) for s in all_de9im]
    # spec: equals is unreachable, and only non-intersecting strings are disjoint
    assert not (r_ij == rel.EQUALS).any()
    disjoint = np.array([s[0] == s[1] == s[3] == s[4] == "F" for s in all_de9im])
    assert ((r_ij == rel.DISJOINT) == disjoint).all()


# --- vectorised builder == pair-by-pair builder on real tiles -----------------------------------------------------

def assert_same_relations(layers):
    args = (layers["polygon"].geoms, layers["line"].geoms, layers["point"].geoms)
    fast, fast_notes = rel.all_relations(*args)
    slow, slow_notes = pw.all_relations(*args)
    assert fast_notes == slow_notes
    for key in fast:
        np.testing.assert_array_equal(fast[key].index, slow[key].index, err_msg=str(key))
        np.testing.assert_array_equal(fast[key].attr, slow[key].attr, err_msg=str(key))
    return fast


@pytest.mark.parametrize("name", samples.osm_tile_names())
def test_vectorised_equals_pairwise_on_bundled_tiles(name):
    layers, _ = load_sample_layers(name)
    edges = assert_same_relations(layers)
    assert sum(e.index.shape[1] for e in edges.values()) > 0


HELSINKI_TILES = [(24.940, 60.166, 24.944, 60.168), (24.944, 60.168, 24.948, 60.170),
                  (24.948, 60.170, 24.952, 60.172), (24.938, 60.172, 24.942, 60.174)]


@pytest.mark.parametrize("bbox", HELSINKI_TILES)
def test_vectorised_equals_pairwise_on_helsinki_tiles(helsinki_features, bbox):
    layers = helsinki_layers(helsinki_features, bbox)
    assert sum(len(v) for v in layers.values()) >= 50, "tile should be dense enough to exercise the rules"
    edges = assert_same_relations(layers)
    # every relation type present somewhere in these dense city tiles
    assert edges[("line", "line")].index.shape[1] > len(layers["line"])


# --- the conventions of the official graphs (bundled UFZ .npz, built by the reference code) ---------------------

@pytest.mark.parametrize("name", samples.ufz_tile_names())
def test_official_graph_conventions(name):
    """The official graphs follow the edge conventions our builder reproduces."""
    with np.load(samples.UFZ_DIR / "graph" / f"{name}.npz") as d:
        g = {k: d[k] for k in d.files}
    for t in ("polygon", "line"):
        ei, ea = g[f"edge_index_{t}_to_{t}"], g[f"edge_attr_{t}_to_{t}"]
        n = len(g[f"x_{t}"])
        pairs = set(map(tuple, ei.T.tolist()))
        assert {(i, i) for i in range(n)} <= pairs                          # self-loops
        assert all((b, a) in pairs for a, b in pairs)                       # undirected connectivity
        assert ei.T.tolist() == sorted(ei.T.tolist())                       # row-major
        assert (ea[:, 5] == 0).all()                                        # "equals" never set
        code = np.array(rel.SAMEDIM_ONEHOT)[ea.argmax(1)]
        assert ((code == rel.SELF) == (ei[0] == ei[1])).all()
    for a, b in (("line", "polygon"), ("point", "line"), ("point", "polygon")):
        fwd, rev = g[f"edge_index_{a}_to_{b}"], g[f"edge_index_{b}_to_{a}"]
        assert fwd.T.tolist() == sorted(fwd.T.tolist())
        assert rev.T.tolist() == sorted(rev.T.tolist())                     # reversed: dst-major of fwd
        assert sorted(map(tuple, rev[::-1].T.tolist())) == sorted(map(tuple, fwd.T.tolist()))
    ei, ea = g["edge_index_point_to_point"], g["edge_attr_point_to_point"]
    n = len(g["x_point"])
    assert ei[:, ei.shape[1] - n:].tolist() == [list(range(n))] * 2         # self-loops appended last
    assert (ea[ei.shape[1] - n:] == [1, 0]).all() and (ea[:ei.shape[1] - n] == [0, 1]).all()
    tri = ei[:, :ei.shape[1] - n].T.tolist()
    assert tri == sorted(tri) and len(set(map(tuple, tri))) == len(tri)
