"""Graph readout for the contrastive branch (spec §3.4): Set2Set per node type, a Linear per type, and the
reference's "type attention" over the three type slots."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.nn import layers


class LSTMCell(nnx.Module):
    """torch.nn.LSTM (1 layer) step with PyTorch's gate order (i, f, g, o) so weights import unchanged.

    weight_ih: [in, 4H] (= torch `weight_ih_l0.T`), weight_hh: [H, 4H], bias_ih/bias_hh: [4H] (both kept, as in
    the state_dict). PyTorch's default init U(±1/√H) for all four."""

    def __init__(self, in_features, hidden, *, rngs):
        init = layers.uniform(1.0 / math.sqrt(hidden))
        self.weight_ih = layers.param(rngs, init, (in_features, 4 * hidden), (None, "gates"))
        self.weight_hh = layers.param(rngs, init, (hidden, 4 * hidden), ("node_hidden", "gates"))
        self.bias_ih = layers.param(rngs, init, (4 * hidden,), ("gates",))
        self.bias_hh = layers.param(rngs, init, (4 * hidden,), ("gates",))

    def __call__(self, x, state):
        """x [B, in], state (h, c) each [B, H] → new (h, c). float32."""
        h, c = state
        gates = x @ self.weight_ih[...] + self.bias_ih[...] + h @ self.weight_hh[...] + self.bias_hh[...]
        i, f, g, o = jnp.split(gates, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return h, c


class Set2Set(nnx.Module):
    """torch_geometric.nn.Set2Set(dim, processing_steps) over padded per-sample node sets.

    lstm: LSTMCell(2·dim → dim). Per step: q = LSTM(q*); e_n = ⟨x_n, q⟩; a = softmax over the sample's valid nodes
    (+1e-16 in the denominator, as PyG); r = Σ a_n x_n; q* = [q, r]."""

    def __init__(self, dim, processing_steps=5, *, rngs):
        self.lstm = LSTMCell(2 * dim, dim, rngs=rngs)
        self.processing_steps = processing_steps

    def __call__(self, x, mask):
        """x float32 [B, N, dim], mask bool [B, N] → q* float32 [B, 2·dim]."""
        b, _, dim = x.shape
        h = c = jnp.zeros((b, dim), jnp.float32)
        q_star = jnp.zeros((b, 2 * dim), jnp.float32)
        for _ in range(self.processing_steps):
            h, c = self.lstm(q_star, (h, c))
            scores = jnp.einsum("bnc,bc->bn", x, h)
            a = layers.masked_softmax(scores, mask, axis=-1, eps=1e-16)
            r = jnp.einsum("bn,bnc->bc", a, x)
            q_star = jnp.concatenate([h, r], axis=-1)
        return q_star


def combine_type_slots(slots, present, type_attention, softmax_over_slots=False):
    """Graph embedding from the per-type slots.

    slots float [B, 3, C] (polygon, line, point; zero for a type the sample lacks); present bool [B, 3];
    type_attention: Dense(C → 1). Faithful (default): softmax over the size-1 last axis, so every weight is 1
    and the result is the plain sum of the slots (and type_attention gets no gradient). softmax_over_slots:
    a real softmax over the present slots. Returns [B, C]."""
    logits = type_attention(slots).astype(jnp.float32)  # [B, 3, 1]
    if softmax_over_slots:
        weights = layers.masked_softmax(logits[..., 0], present, axis=-1)[..., None]
    else:
        weights = jax.nn.softmax(logits, axis=-1)
    return (weights * slots.astype(jnp.float32)).sum(axis=1)
