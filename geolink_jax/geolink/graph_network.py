"""Typed-relation graph attention over padded OSM graph batches (spec §3.3).

One GATConv per relation (PyG 2.4 GATConv semantics: one head, the same W for both ends, LeakyReLU 0.2,
softmax over each destination's incoming edges, no self-loops, edge_attr ignored, bias-only output for a
destination with no incoming edge), the mean over the three relations entering each node type (HeteroConv
aggr='mean'), ReLU, then the reference's graph-mode LayerNorm.

Messages run on `jax.ops.segment_sum` and jraph's segment softmax, per sample (vmapped over the batch, so the
batch axis stays a batch axis and a data-sharded step needs no cross-device gather), with a fixed number of
segments: node i of the destination type is segment i and every padded edge goes to one extra discard segment
N_dst, so padding never touches a real node's output.
"""

import jax
import jax.numpy as jnp
import jraph
from flax import nnx

from geolink_jax.nn import layers
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES, RELATIONS


def _batched_gather(x, idx):
    """x [B, N, C], idx int [B, E] → [B, E, C]."""
    return jnp.take_along_axis(x, idx[:, :, None], axis=1)


class GATConv(nnx.Module):
    """PyG GATConv(in, out, heads=1, add_self_loops=False) for one relation src → dst.

    lin.kernel [in, out] (PyG `lin.weight.T`, shared by both ends), att_src/att_dst [out], bias [out]."""

    def __init__(self, in_features, out_features, *, rngs, dtype=jnp.float32):
        self.lin = layers.Dense(in_features, out_features, rngs=rngs, axes=("node_in", "node_hidden"),
                                use_bias=False, dtype=dtype)
        # PyG glorot on att of shape [1, heads, out]: fan_in = heads = 1, fan_out = out.
        att_init = layers.uniform((6.0 / (1 + out_features)) ** 0.5)
        self.att_src = layers.param(rngs, att_init, (out_features,), ("node_hidden",))
        self.att_dst = layers.param(rngs, att_init, (out_features,), ("node_hidden",))
        self.bias = layers.param(rngs, layers.zeros, (out_features,), ("node_hidden",))
        self.dtype = dtype

    def __call__(self, x_src, x_dst, senders, receivers, edge_mask):
        """x_src [B, Ns, in], x_dst [B, Nd, in]; senders/receivers int [B, E]; edge_mask bool [B, E].

        Returns [B, Nd, out] in float32."""
        n_dst = x_dst.shape[1]
        h_src, h_dst = self.lin(x_src), self.lin(x_dst)
        a_src = jnp.einsum("bnc,c->bn", h_src, self.att_src[...].astype(self.dtype), preferred_element_type=jnp.float32)
        a_dst = jnp.einsum("bnc,c->bn", h_dst, self.att_dst[...].astype(self.dtype), preferred_element_type=jnp.float32)
        score = jnp.take_along_axis(a_src, senders, axis=1) + jnp.take_along_axis(a_dst, receivers, axis=1)
        score = jax.nn.leaky_relu(score, negative_slope=0.2)
        messages = _batched_gather(h_src, senders).astype(jnp.float32)

        def one_sample(score, mask, receivers, messages):  # [E], [E], [E], [E, C] → [Nd, C]
            segment = jnp.where(mask, receivers, n_dst)  # padded edges → the discard segment n_dst
            alpha = jnp.where(mask, jraph.segment_softmax(score, segment, num_segments=n_dst + 1), 0.0)
            return jax.ops.segment_sum(alpha[:, None] * messages, segment, num_segments=n_dst + 1)[:n_dst]

        # per sample (vmapped), so the segment ops keep the batch axis and a batch-sharded step stays local
        return jax.vmap(one_sample)(score, edge_mask, receivers, messages) + self.bias[...]


class HeteroGAT(nnx.Module):
    """`OSMHeteroGAT`: one HeteroConv layer (9 GATConvs, mean per destination type) + ReLU.

    convs[relation] keeps the reference relation order; relation names are 'src_to_dst'."""

    def __init__(self, in_features=512, out_features=128, *, rngs, dtype=jnp.float32):
        self.convs = nnx.Dict({r: GATConv(in_features, out_features, rngs=rngs, dtype=dtype) for r in RELATION_NAMES})

    def __call__(self, x, graph):
        """x: {type: [B, N_t, in]} node inputs; graph: GraphBatch. Returns {type: float32 [B, N_t, out]}."""
        incoming = {t: [] for t in NODE_TYPES}
        for (s, d), r in zip(RELATIONS, RELATION_NAMES):
            incoming[d].append(self.convs[r](x[s], x[d], graph.senders[r], graph.receivers[r], graph.edge_mask(r)))
        # HeteroConv always sees all 9 relations, so each type is the mean of exactly 3 terms.
        return {t: jax.nn.relu(sum(outs) / len(outs)) for t, outs in incoming.items()}


def graph_layer_norm_stats(x, mask, mode="graph", groups=1):
    """Mean and biased std of PyG LayerNorm(mode='graph') over valid entries.

    x float32 [B, N, C]; mask bool [B, N]. mode 'graph' (faithful): one statistic over all valid nodes × channels
    of each of `groups` equal slices of the batch (groups = number of per-device batches in the reference's
    DDP setting; 1 = the whole batch). mode 'per_graph': one statistic per sample (batch-independent).
    Returns (mean, std), each broadcastable to x."""
    b = x.shape[0]
    if mode == "per_graph":
        groups = b
    elif mode != "graph":
        raise ValueError(f"graph norm mode must be 'graph' or 'per_graph', got {mode!r}")
    if b % groups:
        raise ValueError(f"batch {b} is not divisible into {groups} normalisation groups")
    xg = x.reshape(groups, -1, *x.shape[1:])
    mg = mask.reshape(groups, -1, mask.shape[1])[..., None].astype(jnp.float32)
    count = jnp.maximum(mg.sum(axis=(1, 2, 3), keepdims=True) * x.shape[-1], 1.0)
    mean = (xg * mg).sum(axis=(1, 2, 3), keepdims=True) / count
    var = (jnp.square(xg - mean) * mg).sum(axis=(1, 2, 3), keepdims=True) / count
    shape = (b, 1, 1)
    std = jnp.sqrt(jnp.maximum(var, 1e-30))  # finite gradient for an empty or constant group
    return jnp.repeat(mean, b // groups, axis=1).reshape(shape), jnp.repeat(std, b // groups, axis=1).reshape(shape)


class GraphLayerNorm(nnx.Module):
    """torch_geometric.nn.LayerNorm(dim, mode='graph') called without `batch`: y = (x − μ)/(σ + eps)·scale + bias.

    scale/bias: [dim] (PyG weight/bias)."""

    def __init__(self, dim, *, eps=1e-5, mode="graph"):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("node_hidden",))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), logical_axes=("node_hidden",))
        self.eps = eps
        self.mode = mode

    def __call__(self, x, mask, groups=1):
        """x [B, N, C], mask bool [B, N] → float32 [B, N, C] (padded rows are garbage; mask them downstream)."""
        x = x.astype(jnp.float32)
        mean, std = graph_layer_norm_stats(x, mask, self.mode, groups)
        return (x - mean) / (std + self.eps) * self.scale[...] + self.bias[...]
