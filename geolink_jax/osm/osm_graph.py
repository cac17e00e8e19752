"""One tile's heterogeneous OSM graph (spec §1.1, §2): node features, positions and the 9 typed relations."""
import dataclasses

import numpy as np
import shapely

from geolink_jax.osm import NODE_TYPES, POSITION_DIM, RELATIONS, relation_name, tag_encoders
from geolink_jax.osm import positions as pos_lib
from geolink_jax.osm import relations as rel_lib


@dataclasses.dataclass
class TileGraph:
    """Arrays of one tile graph, keyed by node type or relation name ('line_to_polygon').

    features[t]: float32 [N_t, D] tag features; positions[t]: float32 [N_t, 8|6|2] in tile units (y top-down);
    labels[t]: N_t label strings; edge_index[r]: int64 [2, E_r] (src row, dst row); edge_attr[r]: float32 [E_r, d_r].
    labels and edge_attr may be None where nothing reads them (the training pipeline: the model uses neither).
    """

    features: dict
    positions: dict
    labels: dict
    edge_index: dict
    edge_attr: dict

    def num_nodes(self, node_type):
        return len(self.features[node_type])

    def num_edges(self, relation):
        return self.edge_index[relation].shape[1]

    @property
    def is_empty(self):
        return all(self.num_nodes(t) == 0 for t in NODE_TYPES)

    def subgraph(self, keep):
        """The graph on the nodes keep[t] (sorted int indices per type): node arrays filtered, the edges between kept
        nodes kept (with their attributes) and renumbered."""
        new_index = {}
        for t in NODE_TYPES:
            new_index[t] = np.full(self.num_nodes(t), -1, np.int64)
            new_index[t][keep[t]] = np.arange(len(keep[t]))
        edge_index, edge_attr = {}, {}
        for s, d in RELATIONS:
            r = relation_name(s, d)
            ei = np.asarray(self.edge_index[r]).reshape(2, -1)
            if ei.shape[1] == 0:  # most relations of a small tile are empty: skip the index arithmetic
                edge_index[r] = ei.astype(np.int64)
                ok = np.zeros(0, bool)
            else:
                renum = np.stack([new_index[s][ei[0]], new_index[d][ei[1]]])
                ok = (renum >= 0).all(0)
                edge_index[r] = renum[:, ok]
            if self.edge_attr is not None:
                edge_attr[r] = np.asarray(self.edge_attr[r])[ok]
        return TileGraph(
            features={t: self.features[t][keep[t]] for t in NODE_TYPES},
            positions={t: self.positions[t][keep[t]] for t in NODE_TYPES},
            labels=None if self.labels is None else {t: [self.labels[t][i] for i in keep[t]] for t in NODE_TYPES},
            edge_index=edge_index, edge_attr=None if self.edge_attr is None else edge_attr,
        )


def build_relations(layers, delaunay_coords=None, pairwise=False):
    """{kind: Layer} → ({relation name: Edges}, notes). `pairwise` uses the O(n²) reference-style builder."""
    if pairwise:
        from geolink_jax.osm import relations_pairwise as impl
    else:
        impl = rel_lib
    edges, notes = impl.all_relations(layers["polygon"].geoms, layers["line"].geoms, layers["point"].geoms,
                                      delaunay_coords)
    return {relation_name(s, d): edges[(s, d)] for s, d in RELATIONS}, notes


def build_tile_graph(layers, bbox, encoder, tile_id, seed=0, frequency=None, delaunay_coords=None, pairwise=False):
    """Cleaned layers of a tile → (TileGraph, notes).

    layers: {'polygon'|'line'|'point': geometry.Layer} in the tile CRS; bbox: (west, south, east, north) in that CRS;
    encoder: a TagEncoder; seed + tile_id seed the polygon sample points; delaunay_coords: float64 [N_point, 2]
    coordinates the Delaunay point graph runs on (the reference uses lon/lat; default: the points' own coordinates).
    """
    rng = pos_lib.tile_rng(seed, tile_id)
    positions = {
        "polygon": pos_lib.polygon_positions(layers["polygon"].geoms, bbox, rng),
        "line": pos_lib.line_positions(layers["line"].geoms, bbox),
        "point": pos_lib.point_positions(layers["point"].geoms, bbox),
    }
    features = {t: tag_encoders.node_features(layers[t].labels, encoder, frequency) for t in NODE_TYPES}
    edges, notes = build_relations(layers, delaunay_coords, pairwise)
    graph = TileGraph(
        features=features,
        positions=positions,
        labels={t: list(layers[t].labels) for t in NODE_TYPES},
        edge_index={r: e.index for r, e in edges.items()},
        edge_attr={r: e.attr for r, e in edges.items()},
    )
    return graph, notes


def graph_from_npz(path):
    """The native `.npz` graph form (x_<type> = [features | positions], edge_index_/edge_attr_<relation>) →
    TileGraph, splitting positions off by the fixed position widths. Labels are not stored in that form."""
    with np.load(path) as d:
        features, positions = {}, {}
        for t in NODE_TYPES:
            x = d[f"x_{t}"]
            features[t] = x[:, :-POSITION_DIM[t]].astype(np.float32)
            positions[t] = x[:, -POSITION_DIM[t]:].astype(np.float32)
        names = [relation_name(s, t) for s, t in RELATIONS]
        return TileGraph(
            features=features, positions=positions, labels={t: [""] * len(features[t]) for t in NODE_TYPES},
            edge_index={r: d[f"edge_index_{r}"].astype(np.int64) for r in names},
            edge_attr={r: d[f"edge_attr_{r}"].astype(np.float32) for r in names},
        )


def point_lonlat(points, to_lonlat=None):
    """Coordinates the Delaunay graph uses: lon/lat of the points (`to_lonlat` maps tile-CRS x, y arrays)."""
    xy = shapely.get_coordinates(np.asarray(points, dtype=object)).reshape(-1, 2)
    if to_lonlat is None or len(xy) == 0:
        return xy
    return np.stack(to_lonlat(xy[:, 0], xy[:, 1]), -1)


def sample_ufz_graphs():
    """The bundled UFZ tile graphs (real OSM, 512-d CLIP tag features) as TileGraphs, in samples.ufz_tile_names()
    order."""
    from geolink_jax import samples

    return [graph_from_npz(samples.UFZ_DIR / "graph" / f"{n}.npz") for n in samples.ufz_tile_names()]
