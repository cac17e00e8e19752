"""OSM vectors → heterogeneous tile graphs (reference spec §2)."""

NODE_TYPES = ("polygon", "line", "point")

# The 9 relation types as (src, dst), in the order the reference builds them.
RELATIONS = (
    ("polygon", "polygon"),
    ("line", "line"),
    ("line", "polygon"),
    ("polygon", "line"),
    ("point", "point"),
    ("point", "line"),
    ("line", "point"),
    ("point", "polygon"),
    ("polygon", "point"),
)

# Width of the (model-ignored) one-hot relation attribute per relation, spec §1.1.
EDGE_ATTR_DIM = {
    ("polygon", "polygon"): 6,
    ("line", "line"): 6,
    ("line", "polygon"): 3,
    ("polygon", "line"): 3,
    ("point", "point"): 2,
    ("point", "line"): 2,
    ("line", "point"): 2,
    ("point", "polygon"): 2,
    ("polygon", "point"): 2,
}

# Position columns per node type: polygon 4 points, line centroid/start/end, point itself.
POSITION_DIM = {"polygon": 8, "line": 6, "point": 2}


def relation_name(src, dst):
    """'line_to_polygon' style key used in records, npz files and manifests."""
    return f"{src}_to_{dst}"


RELATION_NAMES = tuple(relation_name(s, d) for s, d in RELATIONS)
