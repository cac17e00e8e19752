"""DOFA-CLIP's image tower: a SigLIP ViT (timm `VisionTransformer` as siglip_224 / so400m_patch14_siglip_384: no
CLS token, learned position embeddings, pre-LN blocks with LayerNorm eps 1e-6, qkv bias, exact GELU, a final
LayerNorm, and a MAP (multi-head attention pooling) head) whose patch embedding is DOFA's dynamic one, or the stock
RGB convolution (`patch_embed="rgb"`, SigLIP as released).

Images NHWC [B, H, W, C]; a size that is not a multiple of the patch loses its last pixels (384 px at patch 14:
27 × 27 tokens, 6 px unused), as the strided convolution does. `__call__` returns (pooled [B, D], {block index:
tokens [B, T, D]} of the blocks in `taps` (-1: after the final LayerNorm), the features MaKA's translators read).
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.dofa_clip.patch_embed import DynamicPatchEmbed, PatchEmbedConfig
from geolink_jax.nn import layers, partitioning


@dataclasses.dataclass(frozen=True)
class ImageTowerConfig:
    """Defaults: ViT-B/16 SigLIP at 224 (open_clip `ViT-B-16-SigLIP`)."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    patch_size: int = 16
    image_size: int = 224
    patch_embed: str = "dynamic"  # or "rgb": the stock SigLIP convolution on 3 channels
    # blocks whose outputs are returned (DOFA-CLIP HEAD: 11, 15, 23, depth − 1 where they exist); -1: the final
    # LayerNorm's output (the tokens the MAP head pools)
    taps: tuple = (11,)
    dtype: str = "float32"
    attention_impl: str | None = None
    # The other timm VisionTransformers MaKA's teachers are (DINOv2-L/14 with registers, ViT-L/16 AugReg), so that
    # every teacher can run in the train step on the student's crop: a class token, register tokens, position
    # embeddings over the patches only (timm no_embed_class: the prefix tokens get none) or over [class, patches],
    # LayerScale (timm init_values), and no MAP head ("none": the tower gives tokens, pooled = their mean).
    class_token: bool = False
    reg_tokens: int = 0
    no_embed_class: bool = False
    layer_scale: float = 0.0
    head: str = "map"

    @property
    def prefix_tokens(self):
        return int(self.class_token) + self.reg_tokens

    @property
    def grid(self):
        return self.image_size // self.patch_size


SO400M_384 = ImageTowerConfig(width=1152, depth=27, heads=16, mlp_dim=4304, patch_size=14, image_size=384,
                              taps=(11, 15, 23, 26))


class RGBPatchEmbed(nnx.Module):
    """timm PatchEmbed: Conv2d(3, D, k, stride k) with bias. kernel [k, k, 3, D] (HWIO)."""

    def __init__(self, patch_size, width, *, rngs):
        self.patch_size = patch_size
        self.proj = nnx.Dict(
            kernel=layers.param(rngs, layers.xavier_uniform((0, 1, 2), (3,)), (patch_size, patch_size, 3, width),
                                (None, None, None, "embed")),
            bias=layers.param(rngs, layers.zeros, (width,), ("embed",)))

    def __call__(self, images, wavelengths_um=None, band_valid=None):
        k = self.patch_size
        y = jax.lax.conv_general_dilated(images, self.proj["kernel"][...].astype(images.dtype), (k, k), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y + self.proj["bias"][...].astype(y.dtype)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class MAPHead(nnx.Module):
    """timm AttentionPoolLatent (one latent query): tokens [B, T, D] → [B, D]."""

    def __init__(self, width, heads, mlp_dim, *, rngs, dtype=jnp.float32):
        init = layers.trunc_normal(0.02)
        self.heads = heads
        self.latent = layers.param(rngs, layers.trunc_normal(width ** -0.5), (1, 1, width), (None, None, "embed"))
        self.q = layers.Dense(width, width, rngs=rngs, axes=("embed", "embed_out"), kernel_init=init, dtype=dtype)
        self.kv = layers.Dense(width, 2 * width, rngs=rngs, axes=("embed", "embed_out"), kernel_init=init, dtype=dtype)
        self.proj = layers.Dense(width, width, rngs=rngs, axes=("embed_out", "embed"), kernel_init=init, dtype=dtype)
        self.norm = layers.LayerNorm(width, eps=1e-6, axes=("embed",), dtype=dtype)
        self.mlp = layers.Mlp(width, mlp_dim, rngs=rngs, init=init, dtype=dtype)

    def __call__(self, x):
        b, t, d = x.shape
        h = self.heads
        q = self.q(jnp.broadcast_to(self.latent[...].astype(x.dtype), (b, 1, d))).reshape(b, 1, h, d // h)
        k, v = jnp.unstack(self.kv(x).reshape(b, t, 2, h, d // h), axis=2)
        y = jax.nn.dot_product_attention(q, k, v).reshape(b, 1, d)
        y = self.proj(y)
        y = y + self.mlp(self.norm(y))
        return y[:, 0]


class ImageTower(nnx.Module):
    def __init__(self, cfg: ImageTowerConfig, *, rngs, patch_cfg: PatchEmbedConfig | None = None):
        self.cfg = cfg
        dt = jnp.dtype(cfg.dtype)
        if cfg.patch_embed == "rgb":
            self.patch_embed = RGBPatchEmbed(cfg.patch_size, cfg.width, rngs=rngs)
        elif cfg.patch_embed == "dynamic":
            patch_cfg = patch_cfg or PatchEmbedConfig(width=cfg.width, patch_size=cfg.patch_size)
            self.patch_embed = DynamicPatchEmbed(patch_cfg, rngs=rngs)
        else:
            raise ValueError(f"patch_embed {cfg.patch_embed!r}: 'dynamic' or 'rgb'")
        if cfg.head not in ("map", "none"):
            raise ValueError(f"head {cfg.head!r}: 'map' or 'none'")
        embedded = cfg.grid ** 2 + (0 if cfg.no_embed_class else cfg.prefix_tokens)
        self.pos_embed = layers.param(rngs, layers.trunc_normal(0.02), (1, embedded, cfg.width),
                                      (None, None, "embed"))
        init = layers.trunc_normal(1e-6)
        self.cls_token = layers.param(rngs, init, (1, 1, cfg.width), (None, None, "embed")) if cfg.class_token \
            else None
        self.reg_token = layers.param(rngs, init, (1, cfg.reg_tokens, cfg.width), (None, None, "embed")) \
            if cfg.reg_tokens else None
        self.blocks = nnx.List([
            layers.Block(cfg.width, cfg.heads, cfg.mlp_dim / cfg.width, rngs=rngs, eps=1e-6,
                         init=layers.trunc_normal(0.02), dtype=dt, attention_impl=cfg.attention_impl,
                         layer_scale=cfg.layer_scale)
            for _ in range(cfg.depth)])
        self.norm = layers.LayerNorm(cfg.width, eps=1e-6, axes=("embed",), dtype=dt)
        self.attn_pool = MAPHead(cfg.width, cfg.heads, cfg.mlp_dim, rngs=rngs, dtype=dt) if cfg.head == "map" \
            else None

    def _prefix(self, x):
        """timm's _pos_embed: [class, registers] before the patches; positions added to the patches only
        (no_embed_class) or to the whole sequence."""
        b, _, d = x.shape
        cls = [jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))] if self.cls_token is not None else []
        reg = ([jnp.broadcast_to(self.reg_token[...].astype(x.dtype), (b, self.cfg.reg_tokens, d))]
               if self.reg_token is not None else [])
        pos = self.pos_embed[...].astype(x.dtype)
        if self.cfg.no_embed_class:
            return jnp.concatenate([*cls, *reg, x + pos], axis=1)
        return jnp.concatenate([*cls, *reg, x], axis=1) + pos

    def __call__(self, images, wavelengths_um=None, band_valid=None, taps=None):
        """→ (pooled [B, D], {tap: patch tokens [B, T, D]}): prefix tokens (class, registers) are not in the taps;
        `taps` replaces the config's (downstream feature maps)."""
        x = self.patch_embed(images.astype(jnp.dtype(self.cfg.dtype)), wavelengths_um, band_valid)
        x = self._prefix(x)
        wanted = self.cfg.taps if taps is None else tuple(taps)
        x, taps = partitioning.run_blocks(self.blocks, x, taps=wanted)
        x = self.norm(x)
        if -1 in wanted:
            taps[-1] = x
        n = self.cfg.prefix_tokens
        taps = {k: v[:, n:] for k, v in taps.items()}
        return (self.attn_pool(x) if self.attn_pool is not None else x[:, n:].mean(1)), taps
