"""The relation rules of spec §2.5 written the straightforward way: one shapely `relate` call per pair, rules
tested on the DE-9IM string in Python, first match wins.

This is how the reference builds its graphs (O(n²) Python loop). It is kept as the independent oracle for the
vectorised `relations.py` in the tests and as the baseline of `geolink_jax/bench/preprocess_bench.py`; it is not used by
the preprocessing job.
"""
import numpy as np

from geolink_jax.osm import relations as vec


def _t(s, *positions):
    """Every listed DE-9IM position is not 'F'."""
    return all(s[p] != "F" for p in positions)


def _f(s, *positions):
    """Every listed DE-9IM position is 'F'."""
    return all(s[p] == "F" for p in positions)


def _any4(s):
    return s[vec.II] != "F" or s[vec.IB] != "F" or s[vec.BI] != "F" or s[vec.BB] != "F"


def _disjoint(s):
    return _f(s, vec.II, vec.IB, vec.BI, vec.BB)


def _touches(s):
    return s[vec.II] == "F" and (s[vec.IB] != "F" or s[vec.BI] != "F" or s[vec.BB] != "F")


def classify_samedim(s):
    """s = relate(g_j, g_i), i < j → (r_ij, r_ji)."""
    if _disjoint(s):
        return vec.DISJOINT, vec.DISJOINT
    if _touches(s):
        return vec.TOUCHES, vec.TOUCHES
    if _any4(s) and _f(s, vec.EI, vec.EB):
        return vec.COVERED_BY, vec.COVERS
    if _any4(s) and _f(s, vec.IE, vec.BE):
        return vec.COVERS, vec.COVERED_BY
    if _t(s, vec.II, vec.IE, vec.EI):
        return vec.OVERLAPS, vec.OVERLAPS
    if _t(s, vec.II) and _f(s, vec.IE, vec.BE, vec.EI, vec.EB):
        return vec.EQUALS, vec.EQUALS
    return vec.OTHER, vec.OTHER


def classify_point(s):
    """s = relate(point, other) → 1 disjoint, 2 touches, 3 within, else 0."""
    if _disjoint(s):
        return vec.DISJOINT
    if _touches(s):
        return vec.TOUCHES
    if _t(s, vec.II) and _f(s, vec.IE, vec.BE):
        return vec.WITHIN
    return 0


def classify_line_polygon(s):
    """s = relate(line, polygon) → 1 disjoint, 2 touches, 4 covered by, 3 cross, else 0."""
    if _disjoint(s):
        return vec.DISJOINT
    if _touches(s):
        return vec.TOUCHES
    if _any4(s) and _f(s, vec.IE, vec.BE):
        return vec.COVERED_BY
    if _t(s, vec.II) and (s[vec.IE] != "F" or s[vec.EI] != "F"):
        return vec.CROSS
    return 0


def samedim_matrix(geoms):
    """r [n, n] of category codes, exactly as the reference's double loop fills it."""
    n = len(geoms)
    r = np.zeros((n, n), np.int64)
    for i in range(n):
        for j in range(i + 1, n):
            r[i, j], r[j, i] = classify_samedim(geoms[j].relate(geoms[i]))
    return r


def samedim_edges(geoms):
    r = samedim_matrix(geoms)
    src, dst, codes = [], [], []
    for i in range(len(geoms)):
        for j in range(len(geoms)):
            if r[i, j] not in (vec.DISJOINT, vec.OTHER):
                src.append(i), dst.append(j), codes.append(r[i, j])
    return _edges(src, dst, codes, vec.SAMEDIM_ONEHOT)


def cross_matrix(a, b, classify):
    """r [len(a), len(b)] with r[i, j] = classify(relate(a[i], b[j])), one call per pair."""
    r = np.zeros((len(a), len(b)), np.int64)
    for i, ga in enumerate(a):
        for j, gb in enumerate(b):
            r[i, j] = classify(ga.relate(gb))
    return r


def _cross_edges(r, keep_codes, categories):
    fwd, rev = [], []
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            if r[i, j] in keep_codes:
                fwd.append((i, j, r[i, j]))
    for j in range(r.shape[1]):
        for i in range(r.shape[0]):
            if r[i, j] in keep_codes:
                rev.append((j, i, r[i, j]))
    return (_edges(*zip(*fwd), categories) if fwd else vec.Edges.empty(len(categories)),
            _edges(*zip(*rev), categories) if rev else vec.Edges.empty(len(categories)))


def _edges(src, dst, codes, categories):
    # No sorting: the loops already enumerate in the reference order.
    return vec.Edges(np.array([src, dst], np.int64).reshape(2, -1), vec.onehot(np.array(codes), categories))


def all_relations(polygons, lines, points, point_coords_for_delaunay=None):
    """Same contract as `relations.all_relations`, computed pair by pair."""
    lp, pl = _cross_edges(cross_matrix(lines, polygons, classify_line_polygon),
                          (vec.TOUCHES, vec.CROSS, vec.COVERED_BY), vec.LINE_POLYGON_ONEHOT)
    pt_l, l_pt = _cross_edges(cross_matrix(points, lines, classify_point), (vec.TOUCHES, vec.WITHIN), vec.POINT_ONEHOT)
    pt_p, p_pt = _cross_edges(cross_matrix(points, polygons, classify_point), (vec.TOUCHES, vec.WITHIN),
                              vec.POINT_ONEHOT)
    coords = (np.array([[p.x, p.y] for p in points]).reshape(-1, 2)
              if point_coords_for_delaunay is None else point_coords_for_delaunay)
    ptpt, note = vec.point_point_edges(coords)
    edges = {
        ("polygon", "polygon"): samedim_edges(polygons), ("line", "line"): samedim_edges(lines),
        ("line", "polygon"): lp, ("polygon", "line"): pl, ("point", "point"): ptpt,
        ("point", "line"): pt_l, ("line", "point"): l_pt, ("point", "polygon"): pt_p, ("polygon", "point"): p_pt,
    }
    return edges, [note] if note else []
