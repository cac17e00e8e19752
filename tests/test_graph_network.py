"""The typed-relation GAT, graph-mode LayerNorm and Set2Set against plain numpy on the real UFZ graphs, plus the
padding and permutation properties of the padded layout."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import batch, budget_for, np_params, tiny_model, ufz_graphs

from geolink_jax.geolink.graph_network import graph_layer_norm_stats
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES, RELATIONS
from geolink_jax.tiles.graph_batch import pad_graphs


def _numpy_hetero_gat_layernorm(graphs, conv_params, norm_params, eps=1e-5):
    """PyG-style reference: the graphs concatenated into one big graph (offsets per type), GATConv per relation with
    a per-destination loop, mean of 3, ReLU, then LayerNorm(mode='graph', batch=None) over everything."""
    x, offsets = {}, {}
    for t in NODE_TYPES:
        sizes = [g.num_nodes(t) for g in graphs]
        offsets[t] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        x[t] = np.concatenate([g.features[t] for g in graphs]).astype(np.float64)
    out = {t: [] for t in NODE_TYPES}
    for (s, d), r in zip(RELATIONS, RELATION_NAMES):
        p = conv_params[r]
        w = p["lin"]["kernel"].astype(np.float64)
        h_s, h_d = x[s] @ w, x[d] @ w
        src = np.concatenate([g.edge_index[r][0] + offsets[s][i] for i, g in enumerate(graphs)]).astype(int)
        dst = np.concatenate([g.edge_index[r][1] + offsets[d][i] for i, g in enumerate(graphs)]).astype(int)
        res = np.tile(p["bias"].astype(np.float64), (len(x[d]), 1))
        for i in range(len(x[d])):
            incoming = np.nonzero(dst == i)[0]
            if len(incoming) == 0:
                continue
            e = h_s[src[incoming]] @ p["att_src"] + h_d[i] @ p["att_dst"]
            e = np.where(e > 0, e, 0.2 * e)
            a = np.exp(e - e.max())
            a /= a.sum()
            res[i] += a @ h_s[src[incoming]]
        out[d].append(res)
    result = {}
    for t in NODE_TYPES:
        y = np.maximum(sum(out[t]) / 3.0, 0.0)
        y = (y - y.mean()) / (y.std() + eps) * norm_params[t]["scale"] + norm_params[t]["bias"]
        result[t] = y
    return result


def _unpad(emb, gb, graphs):
    """{t: [B, N, C]} → {t: concatenated valid rows}."""
    return {t: np.concatenate([np.asarray(emb[t][i, :g.num_nodes(t)]) for i, g in enumerate(graphs)])
            for t in NODE_TYPES}


def test_gat_and_graph_layernorm_match_numpy_on_real_ufz_graphs():
    graphs = ufz_graphs()
    model = tiny_model(osm_hidden=128)  # the real GAT width
    params = np_params(model)
    gb = batch(graphs)
    emb, masked = model.encode_graph(gb, key=None)
    assert not any(np.asarray(m).any() for m in masked.values())
    ours = _unpad(emb, gb, graphs)
    ref = _numpy_hetero_gat_layernorm(graphs, params["osm_encoder"]["convs"], params["osm_norm"])
    for t in NODE_TYPES:
        assert ours[t].shape == ref[t].shape
        np.testing.assert_allclose(ours[t], ref[t], rtol=2e-4, atol=2e-4, err_msg=t)


def test_every_relation_is_exercised_by_the_ufz_batch():
    graphs = ufz_graphs()
    for r in RELATION_NAMES:
        assert sum(g.num_edges(r) for g in graphs) > 0, r
    # Some destinations have >= 2 incoming edges (so attention weights are not all 1).
    g = graphs[0]
    assert np.bincount(g.edge_index["line_to_line"][1]).max() >= 2


def _numpy_set2set(x, lstm, steps=5):
    h = np.zeros(x.shape[1])
    c = np.zeros_like(h)
    q_star = np.zeros(2 * x.shape[1])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for _ in range(steps):
        gates = q_star @ lstm["weight_ih"] + lstm["bias_ih"] + h @ lstm["weight_hh"] + lstm["bias_hh"]
        i, f, g, o = np.split(gates, 4)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        e = x @ h
        a = np.exp(e - e.max())
        a = a / (a.sum() + 1e-16)
        q_star = np.concatenate([h, a @ x])
    return q_star


def test_set2set_matches_numpy_per_graph():
    graphs = ufz_graphs()
    model = tiny_model()
    params = np_params(model)
    gb = batch(graphs)
    emb, _ = model.encode_graph(gb, key=None)
    for t in NODE_TYPES:
        ours = np.asarray(model.osm_read_out[t](emb[t], gb.node_mask(t)))
        for i, g in enumerate(graphs):
            n = g.num_nodes(t)
            if n == 0:
                continue
            ref = _numpy_set2set(np.asarray(emb[t][i, :n], np.float64), params["osm_read_out"][t]["lstm"])
            np.testing.assert_allclose(ours[i], ref, rtol=1e-4, atol=1e-5)


def _graph_outputs(model, gb):
    emb, _ = model.encode_graph(gb, key=None)
    return emb, np.asarray(model.graph_embedding(emb, gb))


def test_padding_never_changes_valid_outputs():
    graphs = ufz_graphs()
    model = tiny_model()
    tight = batch(graphs, budget_for(graphs))
    loose = batch(graphs, budget_for(graphs, extra=37))
    e_tight, g_tight = _graph_outputs(model, tight)
    e_loose, g_loose = _graph_outputs(model, loose)
    for t in NODE_TYPES:
        np.testing.assert_allclose(*(_unpad(e, None, graphs)[t] for e in (e_tight, e_loose)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_tight, g_loose, rtol=1e-5, atol=1e-6)


def _permute_graph(g, perms):
    """Relabel nodes: new node j of type t is old node perms[t][j]; edges remapped and their order reversed."""
    inverse = {t: np.argsort(p) for t, p in perms.items()}
    features = {t: g.features[t][perms[t]] for t in NODE_TYPES}
    positions = {t: g.positions[t][perms[t]] for t in NODE_TYPES}
    edge_index = {}
    for (s, d), r in zip(RELATIONS, RELATION_NAMES):
        src, dst = g.edge_index[r]
        edge_index[r] = np.stack([inverse[s][src], inverse[d][dst]])[:, ::-1]
    return dataclasses.replace(g, features=features, positions=positions, edge_index=edge_index)


def test_permutation_equivariance_over_nodes():
    graphs = list(ufz_graphs())
    rng = np.random.default_rng(0)
    perms = {t: rng.permutation(graphs[0].num_nodes(t)) for t in NODE_TYPES}
    permuted = [_permute_graph(graphs[0], perms)] + graphs[1:]
    model = tiny_model()
    e0, g0 = _graph_outputs(model, batch(graphs))
    e1, g1 = _graph_outputs(model, batch(permuted))
    for t in NODE_TYPES:
        n = graphs[0].num_nodes(t)
        np.testing.assert_allclose(np.asarray(e1[t][0, :n]), np.asarray(e0[t][0, :n])[perms[t]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-5)  # the readout is permutation invariant


def test_graph_layernorm_modes_and_groups():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5, 3)).astype(np.float32)
    mask = rng.random((4, 5)) < 0.6
    mask[2] = False  # a sample with no node of this type
    mask[3, :2] = True
    m, s = graph_layer_norm_stats(jnp.asarray(x), jnp.asarray(mask), "graph", groups=1)
    vals = x[mask]
    np.testing.assert_allclose(np.asarray(m).ravel(), vals.mean(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(s).ravel(), vals.std(), rtol=1e-5)
    m2, s2 = graph_layer_norm_stats(jnp.asarray(x), jnp.asarray(mask), "graph", groups=2)
    for rows in ([0, 1], [2, 3]):
        v = x[rows][mask[rows]]
        np.testing.assert_allclose(np.asarray(m2)[rows].ravel(), v.mean(), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(s2)[rows].ravel(), v.std(), rtol=1e-5)
    mp, sp = graph_layer_norm_stats(jnp.asarray(x), jnp.asarray(mask), "per_graph")
    np.testing.assert_allclose(np.asarray(mp)[0, 0, 0], x[0][mask[0]].mean(), rtol=1e-5)
    assert np.isfinite(np.asarray(mp)).all() and np.isfinite(np.asarray(sp)).all()
    with pytest.raises(ValueError, match="mode"):
        graph_layer_norm_stats(jnp.asarray(x), jnp.asarray(mask), "instance")


def test_faithful_graph_norm_depends_on_batch_but_per_graph_does_not():
    graphs = ufz_graphs()
    budget = budget_for(graphs)
    for mode, independent in (("graph", False), ("per_graph", True)):
        model = tiny_model(graph_norm=mode)
        alone, _ = model.encode_graph(batch(graphs[:1], budget), key=None)
        together, _ = model.encode_graph(batch(graphs, budget), key=None)
        n = graphs[0].num_nodes("line")
        same = np.allclose(np.asarray(alone["line"][0, :n]), np.asarray(together["line"][0, :n]), atol=1e-5)
        assert same == independent, mode


def test_pad_graphs_drops_nodes_over_budget_with_their_edges():
    g = ufz_graphs()[0]
    small = budget_for([g])
    small = dataclasses.replace(small, nodes={**small.nodes, "line": 16})
    with pytest.raises(ValueError, match="line nodes exceed the budget"):
        pad_graphs([g], small, names=["tile_x"])
    gb, stats = pad_graphs([g], small, rng=np.random.default_rng(0))
    assert gb.n_node["line"][0] == 16
    assert stats["dropped_nodes"] == g.num_nodes("line") - 16 and stats["over_budget_graphs"] == 1
    assert stats["dropped_edges"] > 0
    for (s, d), r in zip(RELATIONS, RELATION_NAMES):
        n = gb.n_edge[r][0]
        assert (gb.senders[r][0, :n] < gb.n_node[s][0]).all() and (gb.receivers[r][0, :n] < gb.n_node[d][0]).all()
    # Every kept line→line edge is an original edge between the kept lines' features.
    feats = {tuple(f[:4]) for f in g.features["line"]}
    kept = gb.nodes["line"][0, :16]
    assert all(tuple(f[:4]) in feats for f in kept)


def test_jit_compiles_once_for_varying_graphs_within_budget():
    graphs = ufz_graphs()
    budget = budget_for(graphs)
    model = tiny_model()

    @jax.jit
    def embed(model, gb):
        emb, _ = model.encode_graph(gb, key=None)
        return model.graph_embedding(emb, gb)

    for subset in ([0, 1], [2, 3], [4, 5], [5, 0]):
        embed(model, batch([graphs[i] for i in subset], budget))
    assert embed._cache_size() == 1
