"""Raw OSM (.osm.pbf / .osm) → point/line/polygon features with reference-style labels, via pyosmium.

Tagged nodes become points; open ways become lines; closed ways become polygons when their tags describe an area
(the usual OSM area heuristic: `area=yes`, or any key other than the linear ones below), else lines; multipolygon
relations become (multi)polygons, exploded later like any multi-geometry. Tags become `key:value;…` labels with
`tags.label_from_osm_tags`. Elements whose label is empty after dropping names and bookkeeping keys are skipped.
"""
import functools

import numpy as np
import shapely

from geolink_jax.osm import tags as tags_lib

# Keys that make a closed way a ring (line) rather than an area unless area=yes.
LINEAR_KEYS = {"highway", "barrier", "railway", "waterway", "power", "aerialway", "route", "cycleway", "footway",
               "sidewalk", "oneway", "lanes", "maxspeed", "surface", "lit", "bridge", "tunnel", "layer", "access",
               "service", "tracktype", "smoothness", "width", "ref", "incline", "junction", "bicycle", "foot",
               "horse", "motor_vehicle", "segregated"}
LINEAR_NATURAL = {"coastline", "cliff", "tree_row", "ridge", "arete"}


def _closed_way_is_area(tags):
    if tags.get("area") == "no":
        return False
    if tags.get("area") == "yes":
        return True
    if tags.get("natural") in LINEAR_NATURAL:
        return False
    return any(k not in LINEAR_KEYS and k != "area" for k in tags)


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


@functools.lru_cache(maxsize=2)
def load(path):
    """Per-process cache: a worker parses the PBF once for all its tiles."""
    return OsmFeatures(path)
