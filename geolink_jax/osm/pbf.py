"""Raw OSM (.osm.pbf / .osm) → point/line/polygon features with reference-style labels, via pyosmium.

Tagged nodes become points; open ways become lines; closed ways become polygons when their tags describe an area
(the OSM area convention of `AREA_KEYS` / `AREA_VALUES` below), else lines; multipolygon
relations become (multi)polygons, exploded later like any multi-geometry. Tags become `key:value;…` labels with
`tags.label_from_osm_tags`. Elements whose label is empty after dropping names and bookkeeping keys are skipped.
"""
import functools

import numpy as np
import shapely

from geolink_jax.osm import tags as tags_lib

# The OSM area convention (as in osm2pgsql's polygon keys and the iD editor's area keys): a closed way is an area
# when it says area=yes, or carries an area key with a value that is not one of that key's linear values, or one of
# the few area values of a mostly-linear key. Other tags (name, source, ref, junction, surface, ...) decide nothing,
# so a named roundabout stays a line.
AREA_KEYS = {  # key → its values that are still lines
    "building": set(), "building:part": set(), "landuse": set(), "amenity": set(), "shop": set(), "office": set(),
    "craft": set(), "tourism": set(), "historic": set(), "military": {"trench"}, "place": set(),
    "public_transport": set(), "healthcare": set(), "emergency": set(), "sport": set(), "water": set(),
    "wetland": set(), "landcover": set(), "area:highway": set(), "parking": set(), "golf": {"cartpath", "hole"},
    "leisure": {"track", "slipway"}, "aeroway": {"runway", "taxiway", "parking_position"},
    "natural": {"coastline", "cliff", "ridge", "arete", "tree_row", "valley", "earth_bank", "gully"},
    "man_made": {"embankment", "pipeline", "cutline", "breakwater", "groyne", "dyke", "goods_conveyor"},
    "power": {"line", "minor_line", "cable"},
}
AREA_VALUES = {  # mostly-linear key → its values that are areas
    "highway": {"services", "rest_area", "platform"}, "railway": {"platform", "station", "turntable"},
    "waterway": {"riverbank", "dock", "boatyard", "dam", "fuel"}, "barrier": {"hedge_bank"},
}


def _closed_way_is_area(tags):
    area = tags.get("area")
    if area in ("yes", "no"):
        return area == "yes"
    return any(v not in AREA_KEYS[k] for k, v in tags.items() if k in AREA_KEYS) or any(
        v in AREA_VALUES[k] for k, v in tags.items() if k in AREA_VALUES)


class OsmFeatures:
    """All labelled features of an OSM file in EPSG:4326, with a spatial index for per-tile queries."""

    def __init__(self, path):
        import osmium

        self.path = str(path)
        wkb = osmium.geom.WKBFactory()
        geoms, labels, kinds = [], [], []
        ways = []
        proc = osmium.FileProcessor(self.path).with_locations().with_areas()
        for obj in proc:
            tags = dict(obj.tags)
            if not tags:
                continue
            try:
                if obj.is_node():
                    label = tags_lib.label_from_osm_tags(tags)
                    if label:
                        geoms.append(wkb.create_point(obj)), labels.append(label), kinds.append("point")
                elif obj.is_way():
                    closed = len(obj.nodes) >= 4 and obj.nodes[0].ref == obj.nodes[-1].ref
                    if closed and _closed_way_is_area(tags):
                        continue  # comes back as an area object
                    label = tags_lib.label_from_osm_tags(tags)
                    if label:
                        ways.append((wkb.create_linestring(obj), label))
                elif obj.is_area():
                    if obj.from_way() and not _closed_way_is_area(tags):
                        continue
                    label = tags_lib.label_from_osm_tags(tags)
                    if label:
                        geoms.append(wkb.create_multipolygon(obj)), labels.append(label), kinds.append("polygon")
            except Exception:  # osmium cannot build a geometry for broken/incomplete data: not a feature
                continue
        for g, label in ways:
            geoms.append(g), labels.append(label), kinds.append("line")
        self.geoms = shapely.from_wkb(geoms) if geoms else np.zeros(0, dtype=object)
        self.labels = np.asarray(labels, dtype=object)
        self.kinds = np.asarray(kinds, dtype=object)
        self.tree = shapely.STRtree(self.geoms)

    def __len__(self):
        return len(self.geoms)

    def query(self, bbox_lonlat):
        """Features intersecting (west, south, east, north) → (geoms, labels) in EPSG:4326, file order."""
        idx = np.sort(self.tree.query(shapely.box(*bbox_lonlat), predicate="intersects"))
        return self.geoms[idx], list(self.labels[idx])


def check(path):
    """None if `path` reads as an OSM file (its first objects parse), else the short reason: a garbage file is one
    line up front, not one error per tile."""
    import osmium

    try:
        next(iter(osmium.FileProcessor(str(path))), None)
    except Exception as e:  # noqa: BLE001 - osmium's parse errors are RuntimeErrors of varied text
        return f"not a readable OSM file ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
    return None


@functools.lru_cache(maxsize=2)
def load(path):
    """Per-process cache: a worker parses the PBF once for all its tiles."""
    return OsmFeatures(path)
