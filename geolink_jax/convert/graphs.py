"""The official graph file (`.pt`, a pickled PyG HeteroData, spec §1.1) ↔ the native `.npz` graph form.

Reading a `.pt` needs torch + torch_geometric (the `torch` extra) and never runs arbitrary pickled code:
`torch.load(weights_only=True)` with only PyG's storage classes allowed. The `.npz` form needs nothing but numpy:
x_<type> float32 [N, D + 8|6|2] (tag features then the normalised positions, as the official x), and
edge_index_<src>_to_<dst> int64 [2, E], edge_attr_<src>_to_<dst> float32 [E, d] for the 9 relations.
"""

import pathlib

import numpy as np

from geolink_jax.convert.rules import ConversionError
from geolink_jax.osm import NODE_TYPES, POSITION_DIM, RELATIONS, relation_name
from geolink_jax.osm.osm_graph import TileGraph, graph_from_npz


def _safe_globals():
    from torch_geometric.data import HeteroData, storage

    return [HeteroData, storage.BaseStorage, storage.NodeStorage, storage.EdgeStorage, storage.GlobalStorage]


def load_pyg_graph(path):
    """An official `.pt` HeteroData → TileGraph (labels unknown: empty strings). Errors name the file."""
    import torch

    path = pathlib.Path(path)
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # a non-PyG pickle is refused here, before any of its code can run
        raise ConversionError(f"{path}: not a loadable PyG HeteroData ({type(e).__name__}: {str(e)[:300]})") from e
    if not hasattr(data, "node_types"):
        raise ConversionError(f"{path}: holds a {type(data).__name__}, not a HeteroData")
    features, positions = {}, {}
    width = None
    for t in NODE_TYPES:
        if t in data.node_types and getattr(data[t], "x", None) is not None:
            x = data[t].x.numpy().astype(np.float32)
            if x.ndim != 2 or x.shape[1] <= POSITION_DIM[t]:
                raise ConversionError(f"{path}: {t}.x has shape {tuple(x.shape)}, expected [N, D + {POSITION_DIM[t]}]")
            features[t], positions[t] = x[:, :-POSITION_DIM[t]], x[:, -POSITION_DIM[t]:]
            width = features[t].shape[1]
    if width is None:
        raise ConversionError(f"{path}: no node features in any of {NODE_TYPES}")
    for t in NODE_TYPES:
        if t not in features:
            features[t] = np.zeros((0, width), np.float32)
            positions[t] = np.zeros((0, POSITION_DIM[t]), np.float32)
    edge_index, edge_attr = {}, {}
    for s, d in RELATIONS:
        r = relation_name(s, d)
        key = (s, "to", d)
        if key in data.edge_types:
            ei = data[key].edge_index.numpy().astype(np.int64).reshape(2, -1)
            ea = getattr(data[key], "edge_attr", None)
            ea = np.zeros((ei.shape[1], 0), np.float32) if ea is None else ea.numpy().astype(np.float32)
        else:
            ei, ea = np.zeros((2, 0), np.int64), np.zeros((0, 0), np.float32)
        if ei.size and (ei[0].max() >= len(features[s]) or ei[1].max() >= len(features[d])):
            raise ConversionError(f"{path}: relation {r} points past the node arrays")
        edge_index[r], edge_attr[r] = ei, ea
    return TileGraph(features=features, positions=positions, labels={t: [""] * len(features[t]) for t in NODE_TYPES},
                     edge_index=edge_index, edge_attr=edge_attr)


def save_npz(graph, path):
    """TileGraph → the native `.npz` form (readable by `osm_graph.graph_from_npz`)."""
    arrays = {f"x_{t}": np.concatenate([graph.features[t], graph.positions[t]], axis=1).astype(np.float32)
              for t in NODE_TYPES}
    for s, d in RELATIONS:
        r = relation_name(s, d)
        arrays[f"edge_index_{r}"] = np.asarray(graph.edge_index[r], np.int64).reshape(2, -1)
        arrays[f"edge_attr_{r}"] = np.asarray(graph.edge_attr[r], np.float32)
    np.savez_compressed(path, **arrays)
    return path


def convert_pt_dir(src, out, progress=True):
    """Every `*.pt` under src (a file or a directory) → out/<stem>.npz. Returns (written paths, {file: error})."""
    from tqdm import tqdm

    src, out = pathlib.Path(src), pathlib.Path(out)
    files = [src] if src.is_file() else sorted(src.glob("*.pt"))
    out.mkdir(parents=True, exist_ok=True)
    written, errors = [], {}
    for f in tqdm(files, desc="graphs", disable=not progress):
        try:
            written.append(save_npz(load_pyg_graph(f), out / f"{f.stem}.npz"))
        except ConversionError as e:  # record the bad file and go on with the rest
            errors[str(f)] = str(e)
    return written, errors


__all__ = ["load_pyg_graph", "save_npz", "convert_pt_dir", "graph_from_npz"]
