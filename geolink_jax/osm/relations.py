"""The 9 typed spatial relations of a tile graph, vectorised (reference spec §2.5).

Each relation follows the reference rule table on DE-9IM strings (positions 0..8 = II IB IE BI BB BE EI EB EE; a
'T' constraint means "not F"). Disjoint pairs never give an edge, so only pairs whose geometries intersect are
classified: candidates come from one bulk shapely STRtree query, their DE-9IM strings from one vectorised
`shapely.relate` call, and the rules are evaluated as boolean numpy columns. The straightforward O(n²) form of the
same rules lives in `relations_pairwise.py` (test oracle and benchmark baseline).

Edge order matches the reference: row-major over (src, dst); the reversed cross-type relations enumerate
dst-major; point→point lists the sorted unique Delaunay edges, then the self-loops.
"""
import dataclasses

import numpy as np
import scipy.spatial
import shapely

II, IB, IE, BI, BB, BE, EI, EB, EE = range(9)

# Category codes of the reference functions.
SELF, DISJOINT, TOUCHES, OVERLAPS, COVERS, COVERED_BY, EQUALS, OTHER = 0, 1, 2, 3, 4, 5, 6, 7
# point→other codes: touches 2, within 3. line→polygon: touches 2, cross 3, coveredby 4.
WITHIN, CROSS = 3, 3

SAMEDIM_ONEHOT = (SELF, TOUCHES, OVERLAPS, COVERS, COVERED_BY, EQUALS)
POINT_ONEHOT = (TOUCHES, WITHIN)
LINE_POLYGON_ONEHOT = (TOUCHES, CROSS, COVERED_BY)


@dataclasses.dataclass
class Edges:
    """A relation's edges: `index` int64 [2, E] (src row, dst row), `attr` float32 [E, D] one-hot."""

    index: np.ndarray
    attr: np.ndarray

    @staticmethod
    def empty(dim):
        return Edges(np.zeros((2, 0), np.int64), np.zeros((0, dim), np.float32))


def de9im_matrix(strings):
    """DE-9IM strings [n] → bool [n, 9], True where the entry is not 'F'."""
    if len(strings) == 0:
        return np.zeros((0, 9), bool)
    chars = np.frombuffer(np.asarray(strings, dtype="S9").tobytes(), dtype=np.uint8).reshape(-1, 9)
    return chars != ord("F")


def samedim_codes(t):
    """Codes for s = relate(g_j, g_i), i < j, from a not-F matrix t [n, 9] → (r_ij, r_ji) int arrays [n]."""
    any4 = t[:, II] | t[:, IB] | t[:, BI] | t[:, BB]
    conds = [
        ~any4,                                                          # disjoint
        ~t[:, II] & (t[:, IB] | t[:, BI] | t[:, BB]),                   # touches
        any4 & ~t[:, EI] & ~t[:, EB],                                   # g_j covers g_i
        any4 & ~t[:, IE] & ~t[:, BE],                                   # g_j covered by g_i
        t[:, II] & t[:, IE] & t[:, EI],                                 # overlaps (and crossing lines)
        t[:, II] & ~t[:, IE] & ~t[:, BE] & ~t[:, EI] & ~t[:, EB],       # equals (unreachable after covers)
    ]
    r_ij = np.select(conds, [DISJOINT, TOUCHES, COVERED_BY, COVERS, OVERLAPS, EQUALS], OTHER)
    r_ji = np.select(conds, [DISJOINT, TOUCHES, COVERS, COVERED_BY, OVERLAPS, EQUALS], OTHER)
    return r_ij, r_ji


def point_codes(t):
    """s = relate(point, other) → 1 disjoint, 2 touches, 3 within, else 0."""
    any4 = t[:, II] | t[:, IB] | t[:, BI] | t[:, BB]
    conds = [~any4, ~t[:, II] & (t[:, IB] | t[:, BI] | t[:, BB]), t[:, II] & ~t[:, IE] & ~t[:, BE]]
    return np.select(conds, [DISJOINT, TOUCHES, WITHIN], 0)


def line_polygon_codes(t):
    """s = relate(line, polygon) → 1 disjoint, 2 touches, 4 covered by (tested before cross), 3 cross, else 0."""
    any4 = t[:, II] | t[:, IB] | t[:, BI] | t[:, BB]
    conds = [~any4, ~t[:, II] & (t[:, IB] | t[:, BI] | t[:, BB]), any4 & ~t[:, IE] & ~t[:, BE],
             t[:, II] & (t[:, IE] | t[:, EI])]
    return np.select(conds, [DISJOINT, TOUCHES, COVERED_BY, CROSS], 0)


def onehot(codes, categories):
    """Codes [E] → float32 [E, len(categories)]."""
    return (np.asarray(codes)[:, None] == np.asarray(categories)[None, :]).astype(np.float32)


def _edges(src, dst, codes, categories):
    order = np.lexsort((dst, src))
    index = np.stack([src[order], dst[order]]).astype(np.int64)
    return Edges(index, onehot(codes[order], categories))


def intersecting_pairs(a, b):
    """(ia, ib) index arrays of all pairs with a[ia] intersecting b[ib], from one bulk STRtree query."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ia, ib = shapely.STRtree(b).query(a, predicate="intersects")
    return ia.astype(np.int64), ib.astype(np.int64)


def samedim_edges(geoms):
    """polygon→polygon or line→line edges [2, E] with the 6-d one-hot, self-loops included."""
    geoms = np.asarray(geoms, dtype=object)
    n = len(geoms)
    ia, ib = intersecting_pairs(geoms, geoms)
    keep = ia < ib
    i, j = ia[keep], ib[keep]
    r_ij, r_ji = samedim_codes(de9im_matrix(shapely.relate(geoms[j], geoms[i])))
    diag = np.arange(n)
    src = np.concatenate([diag, i, j])
    dst = np.concatenate([diag, j, i])
    codes = np.concatenate([np.full(n, SELF), r_ij, r_ji])
    edge = (codes != DISJOINT) & (codes != OTHER)
    return _edges(src[edge], dst[edge], codes[edge], SAMEDIM_ONEHOT)


def point_other_edges(points, others):
    """(point→other, other→point) edges with the [touches, within|contains] one-hot."""
    points, others = np.asarray(points, dtype=object), np.asarray(others, dtype=object)
    i, j = intersecting_pairs(points, others)
    codes = point_codes(de9im_matrix(shapely.relate(points[i], others[j])))
    edge = (codes == TOUCHES) | (codes == WITHIN)
    i, j, codes = i[edge], j[edge], codes[edge]
    return _edges(i, j, codes, POINT_ONEHOT), _edges(j, i, codes, POINT_ONEHOT)


def line_polygon_edges(lines, polygons):
    """(line→polygon, polygon→line) edges with the [touches, crosses, coveredby|covers] one-hot."""
    lines, polygons = np.asarray(lines, dtype=object), np.asarray(polygons, dtype=object)
    i, j = intersecting_pairs(lines, polygons)
    codes = line_polygon_codes(de9im_matrix(shapely.relate(lines[i], polygons[j])))
    edge = (codes == TOUCHES) | (codes == CROSS) | (codes == COVERED_BY)
    i, j, codes = i[edge], j[edge], codes[edge]
    return _edges(i, j, codes, LINE_POLYGON_ONEHOT), _edges(j, i, codes, LINE_POLYGON_ONEHOT)


def point_point_edges(coords):
    """Delaunay neighbours (both directions, sorted unique, attr [0,1]) then self-loops (attr [1,0]).

    Delaunay runs only with more than 3 points and on the raw coordinates given (the reference uses lon/lat).
    Returns (edges, note): note is None, or the reason Delaunay was skipped (degenerate input), as the reference
    prints and skips in that case.
    """
    coords = np.asarray(coords, np.float64).reshape(-1, 2)
    n = len(coords)
    pairs, note = np.zeros((0, 2), np.int64), None
    if n > 3:
        try:
            simplices = scipy.spatial.Delaunay(coords).simplices
            tri = np.concatenate([simplices[:, [0, 1]], simplices[:, [1, 2]], simplices[:, [2, 0]]])
            both = np.concatenate([tri, tri[:, ::-1]]).astype(np.int64)
            key = np.unique(both[:, 0] * n + both[:, 1])  # 1-D keys: same lexicographic order, faster
            pairs = np.stack([key // n, key % n], 1)
        except scipy.spatial.QhullError as e:
            note = f"Delaunay skipped: {str(e).splitlines()[0]}"
    loops = np.arange(n, dtype=np.int64)
    index = np.concatenate([pairs.T, np.stack([loops, loops])], axis=1)
    attr = np.concatenate([np.tile([0, 1], (len(pairs), 1)), np.tile([1, 0], (n, 1))]).astype(np.float32)
    return Edges(index, attr.reshape(-1, 2)), note


def all_relations(polygons, lines, points, point_coords_for_delaunay=None):
    """All 9 relations of a tile → ({(src, dst): Edges}, notes). Geometries must be single-part and valid."""
    pp = samedim_edges(polygons)
    ll = samedim_edges(lines)
    lp, pl = line_polygon_edges(lines, polygons)
    pt_l, l_pt = point_other_edges(points, lines)
    pt_p, p_pt = point_other_edges(points, polygons)
    coords = (shapely.get_coordinates(np.asarray(points, dtype=object))
              if point_coords_for_delaunay is None else point_coords_for_delaunay)
    ptpt, note = point_point_edges(coords)
    edges = {
        ("polygon", "polygon"): pp, ("line", "line"): ll, ("line", "polygon"): lp, ("polygon", "line"): pl,
        ("point", "point"): ptpt, ("point", "line"): pt_l, ("line", "point"): l_pt,
        ("point", "polygon"): pt_p, ("polygon", "point"): p_pt,
    }
    return edges, [note] if note else []
