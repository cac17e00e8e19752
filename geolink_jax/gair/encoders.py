"""GAIR's two image encoders.

RS: the CROMA optical ViT (torchgeo `croma.ViT`, GAIR's `rs_encoder.s2_encoder`): patches flattened channel-major
(`b c (h i) (w j) -> b (h w) (c i j)`) by one linear layer, no position embeddings but a 2D-ALiBi attention bias
(−slope_h × Euclidean distance between patch cells, slopes 2^(−8(h+1)/H)), pre-LN blocks with LayerNorm eps 1e-5,
q/k/v without bias, exact GELU, and a final LayerNorm (`final_norm`, off in GAIR's later inference package).

SV: a ViT-B/16 laid out as Hugging Face `ViTModel`: conv patch embedding, CLS token, learned position embeddings,
pre-LN blocks with LayerNorm eps 1e-12, a final LayerNorm, and the pooler tanh(dense(CLS)).

Images are NHWC float [B, H, W, C].
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geolink_jax.nn import layers, partitioning
from geolink_jax.nn.vit import PatchEmbed


@dataclasses.dataclass(frozen=True)
class RSEncoderConfig:
    """CROMA-base optical: 10 Sentinel-2 bands, 96 px, patch 8 (12 × 12 = 144 tokens)."""

    width: int = 768
    depth: int = 12
    num_heads: int = 16
    patch_size: int = 8
    image_size: int = 96
    in_channels: int = 10
    final_norm: bool = True  # the research code's (and CROMA's) norm_out; GAIR's inference package drops it
    remat: str = "none"  # nn/partitioning.REMAT_POLICIES: recompute block activations in the backward pass


@dataclasses.dataclass(frozen=True)
class SVEncoderConfig:
    """HF ViTConfig(image_size=224, patch_size=16, hidden_size=768, 12 layers, 12 heads, intermediate 3072)."""

    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    image_size: int = 224
    # in training steps only (the teachers and evaluation never drop): attention_probs_dropout_prob 0.1 as the
    # research code and the inference package build it; hidden_dropout_prob (embeddings, each branch's output) 0.1 in
    # the inference package, 0 in the research run. Attention dropout takes the explicit-softmax path (no fused
    # attention kernel): `sv.attention_dropout=0` is the faster, named deviation.
    attention_dropout: float = 0.1
    hidden_dropout: float = 0.0
    remat: str = "none"  # nn/partitioning.REMAT_POLICIES: its 32 photos a patch are most of a step's activations


def alibi_slopes(num_heads):
    """ALiBi's geometric head slopes, start = ratio = 2^(−2^−(log2 H − 3)): 2^(−0.5(h+1)) for 16 heads."""
    start = 2.0 ** (-(2.0 ** -(math.log2(num_heads) - 3)))
    return np.array([start * start ** h for h in range(num_heads)], np.float32)


def alibi_2d(num_heads, grid_h, grid_w):
    """float32 [H, T, T], T = grid_h·grid_w (row-major cells): −slope_h · Euclidean distance between cells i and
    j. Built for any grid, so any image size works."""
    rows, cols = np.divmod(np.arange(grid_h * grid_w), grid_w)
    dist = np.sqrt((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).astype(np.float32)
    return -alibi_slopes(num_heads)[:, None, None] * dist[None]


def patchify_channel_major(images, p):
    """[B, H, W, C] → [B, (H/p)·(W/p), C·p·p] in (c, i, j) order (CROMA's linear_input layout)."""
    b, h, w, c = images.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by the patch size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


class RSEncoder(nnx.Module):
    """CROMA optical ViT. images [B, H, W, C] → tokens [B, (H/8)·(W/8), D] (row-major cells)."""

    def __init__(self, cfg: RSEncoderConfig, *, rngs, dtype=jnp.float32, attention_impl=None):
        self.cfg = cfg
        d = cfg.width
        init = layers.xavier_uniform()
        self.linear_input = layers.Dense(cfg.patch_size ** 2 * cfg.in_channels, d, rngs=rngs,
                                         axes=("patch_in", "embed"), kernel_init=init, dtype=dtype)
        self.blocks = nnx.List([
            layers.Block(d, cfg.num_heads, 4.0, rngs=rngs, eps=1e-5, init=None, dtype=dtype,
                         attention_impl=attention_impl, qkv_bias=False)
            for _ in range(cfg.depth)])
        self.norm_out = layers.LayerNorm(d, eps=1e-5, axes=("embed",), dtype=dtype) if cfg.final_norm else None

    def __call__(self, images, taps=None):
        """`taps`: also {i: raw output of block i [B, T, D]} (a second value)."""
        p = self.cfg.patch_size
        gh, gw = images.shape[1] // p, images.shape[2] // p
        bias = alibi_2d(self.cfg.num_heads, gh, gw)  # a compile-time constant of the grid
        x = self.linear_input(patchify_channel_major(images, p))
        x = partitioning.run_blocks(self.blocks, x, taps=taps, remat=self.cfg.remat, attn_bias=bias)
        if taps is not None:
            x, tapped = x
        x = self.norm_out(x) if self.norm_out is not None else x
        return x if taps is None else (x, tapped)


class SVEncoder(nnx.Module):
    """HF ViTModel. images [B, 224, 224, 3] → (pooled [B, D] = tanh(dense(LN(x)[:, 0])), tokens [B, 1 + T, D])."""

    def __init__(self, cfg: SVEncoderConfig, *, rngs, dtype=jnp.float32, attention_impl=None):
        self.cfg = cfg
        d = cfg.width
        grid = cfg.image_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, 3, d, rngs=rngs, dtype=dtype)
        self.cls_token = layers.param(rngs, layers.trunc_normal(0.02), (1, 1, d), (None, None, "embed"))
        self.pos_embed = layers.param(rngs, layers.trunc_normal(0.02), (1, grid * grid + 1, d),
                                      (None, None, "embed"))
        self.blocks = nnx.List([
            layers.Block(d, cfg.num_heads, cfg.mlp_dim / d, rngs=rngs, eps=1e-12, init=layers.trunc_normal(0.02),
                         dtype=dtype, attention_impl=attention_impl, attention_dropout=cfg.attention_dropout,
                         dropout=cfg.hidden_dropout)
            for _ in range(cfg.depth)])
        self.norm = layers.LayerNorm(d, eps=1e-12, axes=("embed",), dtype=dtype)
        self.pooler = layers.Dense(d, d, rngs=rngs, axes=("embed", "embed_out"), kernel_init=layers.trunc_normal(0.02),
                                   dtype=dtype)

    def __call__(self, images, dropout_key=None):
        """dropout_key: a key in training steps (the config's dropouts apply), None otherwise."""
        x = self.patch_embed(images)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(x.dtype)
        if dropout_key is not None:
            embed_key, dropout_key = jax.random.split(dropout_key)
            x = layers.dropout(x, self.cfg.hidden_dropout, embed_key)
        x = partitioning.run_blocks(self.blocks, x, remat=self.cfg.remat, dropout_key=dropout_key)
        x = self.norm(x)
        return jnp.tanh(self.pooler(x[:, 0])), x
