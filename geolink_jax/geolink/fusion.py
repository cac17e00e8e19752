"""Cross-modal fusion block: the reference's `TwoWayAttentionBlock_Attention` (spec §3.5).

In GeoLink the "queries" are the dense IMAGE tokens and the "keys" the sparse OSM NODE tokens (the reverse of
SAM's naming; the submodule names below keep the reference's so weights map one-to-one):

  1. nodes:  K ← norm1(K + self_attn(q=K+P_K, k=K+P_K, v=K, node mask))
  2. image:  Q ← norm2(Q + cross_attn_token_to_image(q=Q+P_Q, k=K+P_K, v=K, node mask))
  3. nodes:  K ← norm3(K + cross_attn_image_to_token(q=K+P_K, k=Q+P_Q, v=Q))
  4. nodes:  K ← norm4(mlp(K))            (a Linear, no residual, no activation)

Attention-probability dropout (0.1) acts only when a dropout key is given (train mode). Samples without any
valid node get zero attention output from the node keys instead of the reference's NaN.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.nn import layers


class TwoWayAttentionBlock(nnx.Module):
    """dim 256, 16 heads (head dim 16) by default; all LayerNorms eps 1e-5."""

    def __init__(self, dim=256, num_heads=16, *, rngs, dropout=0.1, dtype=jnp.float32):
        # torch MHA: in_proj xavier over the packed [3E, E] weight, out_proj xavier (GeoLink's Linear rule).
        mha = dict(rngs=rngs, qkv_init=layers.xavier_uniform((0,), (1, 2, 3)),
                   out_init=layers.xavier_uniform((0, 1), (2,)), dtype=dtype, dropout=dropout)
        self.self_attn = layers.MultiHeadAttention(dim, num_heads, **mha)
        self.norm1 = layers.LayerNorm(dim, eps=1e-5, axes=("embed",), dtype=dtype)
        self.cross_attn_token_to_image = layers.MultiHeadAttention(dim, num_heads, **mha)
        self.norm2 = layers.LayerNorm(dim, eps=1e-5, axes=("embed",), dtype=dtype)
        self.cross_attn_image_to_token = layers.MultiHeadAttention(dim, num_heads, **mha)
        self.norm3 = layers.LayerNorm(dim, eps=1e-5, axes=("embed",), dtype=dtype)
        self.mlp = layers.Dense(dim, dim, rngs=rngs, axes=("embed", "embed_out"), dtype=dtype)
        self.norm4 = layers.LayerNorm(dim, eps=1e-5, axes=("embed",), dtype=dtype)

    def __call__(self, image, nodes, image_pe, node_pe, node_mask, *, dropout_key=None, return_attention=False):
        """image [B, Nq, dim], nodes [B, Nk, dim], image_pe [B|1, Nq, dim], node_pe [B, Nk, dim],
        node_mask bool [B, Nk] (True = real node).

        Returns (image', nodes') and, if return_attention, the head-averaged node→image attention
        float32 [B, Nk, Nq] of step 3 (the reference's `require_attn` output)."""
        keys = jax.random.split(dropout_key, 3) if dropout_key is not None else (None,) * 3
        k = nodes + node_pe
        nodes = self.norm1(nodes + self.self_attn(k, k, nodes, key_mask=node_mask, dropout_key=keys[0]))
        k = nodes + node_pe
        q = image + image_pe
        image = self.norm2(image + self.cross_attn_token_to_image(q, k, nodes, key_mask=node_mask,
                                                                  dropout_key=keys[1]))
        q = image + image_pe
        k = nodes + node_pe
        out = self.cross_attn_image_to_token(k, q, image, dropout_key=keys[2], return_weights=return_attention)
        out, attention = out if return_attention else (out, None)
        nodes = self.norm3(nodes + out)
        nodes = self.norm4(self.mlp(nodes))
        return (image, nodes, attention) if return_attention else (image, nodes)
