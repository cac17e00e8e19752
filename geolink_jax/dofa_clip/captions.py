"""Image–caption pairs from image + OSM tiles, the way SkyScript built its pairs: an image window around an OSM
object, captioned from that object's tags and the tags of the objects it shares the window with.

A tile directory holds `<name>/` folders of `<name>.jpg|png`, `<name>.json` ({bbox_west_south_east_north,
center_tags, …}) and optional `<name>_{polygon,line,point}.geojson` with a `label` column of `key:value;…` tags
(the layout of `sample_data/osm_tiles`, sample_data/README.md). Per tile:
- the whole tile, captioned "a satellite image of <center tags>, with <the most frequent other tags>";
- per distinct polygon tag set, the object's largest instance: a square window around it (1.5 × its extent, at
  least `min_window` px, inside the tile), captioned "a satellite image of <its tags>, next to <up to 3 other tags
  in the window>". A window covering most of the tile repeats the whole-tile pair and is left out.
Pixel positions are linear in the tile's lon/lat box, as GeoLink's preprocessing places OSM features.
"""

import json
import pathlib

from geolink_jax.data import shards

SKIP_KEYS = ("name", "ref", "tracktype", "surface", "source", "note", "description", "operator", "website")


def phrase(label):
    """'landuse:grass;golf:green' → 'grass (green)'; a value equal to its key (a `yes` tag) → the key; names,
    references and surface attributes are left out."""
    tags = [t.split(":", 1) for t in str(label).split(";") if ":" in t]
    tags = [(k, v) for k, v in tags if not any(s in k for s in SKIP_KEYS)]
    words = [(v if v != k else k).replace("_", " ") for k, v in tags]
    if not words:
        return ""
    return words[0] + (f" ({', '.join(dict.fromkeys(words[1:]))})" if len(words) > 1 else "")


def _tag_label(tags):
    return ";".join(f"{k}:{v}" for k, v in tags.items())


def _layers(tile):
    import geopandas as gpd

    out = []
    for kind in ("polygon", "line", "point"):
        path = tile / f"{tile.name}_{kind}.geojson"
        if path.exists():
            frame = gpd.read_file(path)
            out += [(kind, str(label), geom) for label, geom in zip(frame["label"], frame.geometry)
                    if geom is not None and not geom.is_empty]
    return out


def tile_pairs(tile, min_window=64, max_cover=0.8):
    """One tile folder → [(window (x0, y0, x1, y1) or None, caption)], the image path."""
    from PIL import Image

    image = next((p for p in (tile / f"{tile.name}{s}" for s in (".jpg", ".jpeg", ".png")) if p.exists()), None)
    if image is None:
        raise ValueError("no <name>.jpg|png image")
    meta = json.loads((tile / f"{tile.name}.json").read_text())
    west, south, east, north = meta["bbox_west_south_east_north"]
    with Image.open(image) as im:
        width, height = im.size
    from shapely.geometry import box

    objects = [(kind, label, phrase(label), geom) for kind, label, geom in _layers(tile)]  # each phrase once
    counts = {}
    for _, _, p, _ in objects:
        if p:
            counts[p] = counts.get(p, 0) + 1
    centre = phrase(_tag_label(meta.get("center_tags") or {}))
    others = [p for p, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if p != centre][:3]
    pairs = []
    if centre or others:
        subject = centre or others.pop(0)
        pairs.append((None, f"a satellite image of {subject}" + (f", with {', '.join(others)}" if others else "")))

    def to_px(x, y):
        return (x - west) / (east - west) * width, (north - y) / (north - south) * height

    largest = {}
    for kind, label, p, geom in objects:
        if kind == "polygon" and p:
            area = geom.area
            if area > largest.get(label, (0, None, None))[0]:
                largest[label] = (area, p, geom)
    for label in sorted(largest):
        _, subject, geom = largest[label]
        x0, y1 = to_px(geom.bounds[0], geom.bounds[1])
        x1, y0 = to_px(geom.bounds[2], geom.bounds[3])
        side = max(1.5 * max(x1 - x0, y1 - y0), min_window)
        side = min(side, width, height)
        cx = min(max((x0 + x1) / 2, side / 2), width - side / 2)
        cy = min(max((y0 + y1) / 2, side / 2), height - side / 2)
        window = tuple(int(round(v)) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
        if side * side > max_cover * width * height:
            continue
        lon0, lat1 = west + window[0] / width * (east - west), north - window[1] / height * (north - south)
        lon1, lat0 = west + window[2] / width * (east - west), north - window[3] / height * (north - south)
        inside = box(lon0, lat0, lon1, lat1)
        near = []
        for _, _, p, g in objects:
            if p and p != subject and p not in near and g.intersects(inside):
                near.append(p)
        pairs.append((window, f"a satellite image of {subject}" + (
            f", next to {', '.join(sorted(near)[:3])}" if near else "")))
    return pairs, image


def osm_pairs(tiles_dir, min_window=64):
    """A directory of tile folders → (PairSpecs, problems): a tile that cannot be read is reported and skipped."""
    from geolink_jax.dofa_clip.pairs import RGB, PairSpec, problem

    tiles_dir = pathlib.Path(tiles_dir)
    tiles = sorted(p for p in tiles_dir.iterdir() if p.is_dir())
    if not tiles:
        raise shards.DataError(f"{tiles_dir}: no tile folders (<name>/<name>.jpg + <name>.json + OSM layers)")
    specs, problems = [], []
    for tile in tiles:
        try:
            pairs, image = tile_pairs(tile, min_window)
        except Exception as e:  # noqa: BLE001 - a bad tile is reported, the others go on
            problems.append(problem(tile.name, f"unreadable tile: {type(e).__name__}: {e}", tile))
            continue
        if not pairs:
            problems.append(problem(tile.name, "no OSM tags to caption the tile with", tile))
        for k, (window, caption) in enumerate(pairs):
            specs.append(PairSpec(len(specs), f"{tile.name}/{k}", str(image), caption, RGB, "osm_tiles", window,
                                  row=tile.name))
    return specs, problems
