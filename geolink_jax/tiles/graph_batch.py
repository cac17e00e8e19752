"""Padded batches of heterogeneous OSM tile graphs with static shapes (spec §9.2).

Each sample is padded on its own to a fixed budget per node type and per relation, so a batch is a set of
dense arrays with a leading batch axis that shards over the data axes like the images. The layout follows
jraph's GraphsTuple vocabulary (senders/receivers/n_node/n_edge) with jraph's padding contract: the valid
entries come first, padding after, and masks are `arange(budget) < n`. jraph's own GraphsTuple is homogeneous
(jraph#7), so one GraphsTuple per type/relation would only hide the typing; this container keeps it explicit.

Node indices in senders/receivers are local to the sample (0..N_t−1 of the source/destination type). Padded
edges are (0, 0) and masked; the graph network routes them to a discard segment.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from geolink_jax.osm import NODE_TYPES, POSITION_DIM, RELATION_NAMES


def round_up(x, multiple=8):
    """x (≥ 1, ceiled) rounded up to a multiple."""
    return int(-(-max(int(np.ceil(x)), 1) // multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class GraphBudget:
    """Per-sample padding budgets: nodes {type: N_t} and edges {relation: E_r}."""

    nodes: dict
    edges: dict

    @classmethod
    def default(cls):
        """Budgets that hold every bundled tile (UFZ maxima 47/67/47 nodes, 303 point→point edges)."""
        nodes = {"polygon": 64, "line": 128, "point": 64}
        edges = {"polygon_to_polygon": 256, "line_to_line": 512, "line_to_polygon": 128, "polygon_to_line": 128,
                 "point_to_point": 512, "point_to_line": 128, "line_to_point": 128, "point_to_polygon": 128,
                 "polygon_to_point": 128}
        return cls(nodes, edges)

    @classmethod
    def from_manifest(cls, manifest, stat="max", multiple=8):
        """Budgets from a preprocessing manifest's per-type/per-relation count statistics ('max', 'p99', …),
        rounded up to `multiple`. Tiles above a percentile budget lose random nodes in the pipeline (counted)."""
        nodes = {t: round_up(manifest["node_counts"][t][stat], multiple) for t in NODE_TYPES}
        edges = {r: round_up(manifest["edge_counts"][r][stat], multiple) for r in RELATION_NAMES}
        return cls(nodes, edges)

    @classmethod
    def covering(cls, graphs, multiple=8):
        """The smallest budgets (rounded up to `multiple`) that hold every graph in `graphs`."""
        nodes = {t: round_up(max(g.num_nodes(t) for g in graphs), multiple) for t in NODE_TYPES}
        edges = {r: round_up(max(g.num_edges(r) for g in graphs), multiple) for r in RELATION_NAMES}
        return cls(nodes, edges)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GraphBatch:
    """B padded tile graphs.

    nodes[t]: float [B, N_t, F] tag features; positions[t]: float32 [B, N_t, 8|6|2] normalised (x, y) pairs;
    n_node[t]: int32 [B]; senders[r], receivers[r]: int32 [B, E_r]; n_edge[r]: int32 [B].
    Keys: t in NODE_TYPES ('polygon', 'line', 'point'), r in RELATION_NAMES ('line_to_polygon', …).
    """

    nodes: dict
    positions: dict
    n_node: dict
    senders: dict
    receivers: dict
    n_edge: dict

    @property
    def batch_size(self):
        return self.n_node[NODE_TYPES[0]].shape[0]

    def node_mask(self, node_type):
        """bool [B, N_t]: True for real nodes."""
        budget = self.nodes[node_type].shape[1]
        return jnp.arange(budget)[None, :] < self.n_node[node_type][:, None]

    def edge_mask(self, relation):
        """bool [B, E_r]: True for real edges."""
        budget = self.senders[relation].shape[1]
        return jnp.arange(budget)[None, :] < self.n_edge[relation][:, None]


def _subsample_nodes(graph, node_type, budget, rng, path):
    n = graph.num_nodes(node_type)
    if n <= budget:
        return np.arange(n)
    if rng is None:
        raise ValueError(f"{path}: {n} {node_type} nodes exceed the budget of {budget} (pass rng to drop nodes)")
    return np.sort(rng.choice(n, budget, replace=False))


def fit_to_budget(graph, budget, rng=None, name="graph"):
    """A TileGraph → (the graph within `budget`, stats). Over a node budget it keeps a random subset of that many
    nodes of the type (with `rng`, a numpy Generator; without it, over-budget input is an error naming the tile)
    and loses the edges touching the dropped nodes; a relation still over its edge budget keeps a random subset of
    edges. stats: {'dropped_nodes', 'dropped_edges', 'over_budget_graphs'} (ints)."""
    stats = {"dropped_nodes": 0, "dropped_edges": 0, "over_budget_graphs": 0}
    keep = {t: _subsample_nodes(graph, t, budget.nodes[t], rng, name) for t in NODE_TYPES}
    over = any(len(keep[t]) < graph.num_nodes(t) for t in NODE_TYPES)
    if over:
        sub = graph.subgraph(keep)
        stats["dropped_nodes"] += sum(graph.num_nodes(t) - sub.num_nodes(t) for t in NODE_TYPES)
        stats["dropped_edges"] += sum(graph.num_edges(r) - sub.num_edges(r) for r in RELATION_NAMES)
        graph = sub
    edge_index, edge_attr = None, None
    for r in RELATION_NAMES:
        ei = np.asarray(graph.edge_index[r]).reshape(2, -1)
        if ei.shape[1] > budget.edges[r]:
            if rng is None:
                raise ValueError(f"{name}: {ei.shape[1]} {r} edges exceed the budget of {budget.edges[r]} "
                                 "(pass rng to drop edges)")
            sel = np.sort(rng.choice(ei.shape[1], budget.edges[r], replace=False))
            stats["dropped_edges"] += ei.shape[1] - len(sel)
            if edge_index is None:
                edge_index = dict(graph.edge_index)
                edge_attr = None if graph.edge_attr is None else dict(graph.edge_attr)
            edge_index[r], over = ei[:, sel], True
            if edge_attr is not None:
                edge_attr[r] = np.asarray(edge_attr[r])[sel]
    if edge_index is not None:
        graph = dataclasses.replace(graph, edge_index=edge_index, edge_attr=edge_attr)
    stats["over_budget_graphs"] = int(over)
    return graph, stats


def pad_graphs(graphs, budget, rng=None, feature_dtype=np.float32, names=None):
    """TileGraphs → (GraphBatch of numpy arrays, stats summed over the graphs); each graph is first fitted to the
    budget (`fit_to_budget`: random nodes and edges dropped with `rng`, an error without it)."""
    names = names or [f"graph {i}" for i in range(len(graphs))]
    stats = {"dropped_nodes": 0, "dropped_edges": 0, "over_budget_graphs": 0}
    fitted = []
    for g, name in zip(graphs, names):
        g, st = fit_to_budget(g, budget, rng, name)
        fitted.append(g)
        stats = {k: stats[k] + st[k] for k in stats}
    return pad_fitted(fitted, budget, feature_dtype, names), stats


def pad_fitted(graphs, budget, feature_dtype=np.float32, names=None):
    """TileGraphs within the budget → GraphBatch of numpy arrays (valid entries first, zeros after)."""
    names = names or [f"graph {i}" for i in range(len(graphs))]
    b = len(graphs)
    out = {k: {} for k in ("nodes", "positions", "n_node", "senders", "receivers", "n_edge")}
    for t in NODE_TYPES:
        width = graphs[0].features[t].shape[1] if b else 0
        out["nodes"][t] = np.zeros((b, budget.nodes[t], width), feature_dtype)
        out["positions"][t] = np.zeros((b, budget.nodes[t], POSITION_DIM[t]), np.float32)
        out["n_node"][t] = np.zeros((b,), np.int32)
    for r in RELATION_NAMES:
        out["senders"][r] = np.zeros((b, budget.edges[r]), np.int32)
        out["receivers"][r] = np.zeros((b, budget.edges[r]), np.int32)
        out["n_edge"][r] = np.zeros((b,), np.int32)
    for i, (g, name) in enumerate(zip(graphs, names)):
        for t in NODE_TYPES:
            if g.features[t].shape[1] != out["nodes"][t].shape[2]:
                raise ValueError(f"{name}: {t} features are {g.features[t].shape[1]}-d, the batch's are "
                                 f"{out['nodes'][t].shape[2]}-d")
            n = g.num_nodes(t)
            out["nodes"][t][i, :n] = g.features[t]
            out["positions"][t][i, :n] = g.positions[t]
            out["n_node"][t][i] = n
        for r in RELATION_NAMES:
            ei = np.asarray(g.edge_index[r]).reshape(2, -1)
            out["senders"][r][i, :ei.shape[1]] = ei[0]
            out["receivers"][r][i, :ei.shape[1]] = ei[1]
            out["n_edge"][r][i] = ei.shape[1]
    return GraphBatch(**out)
