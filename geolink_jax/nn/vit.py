"""ViT image encoder pieces (spec §3.1): timm PatchEmbed and Blocks, run on the visible tokens only.

Images are NHWC float [B, H, W, C] (the reference is NCHW; transpose once at the input). Patches are flattened
in (row-in-patch, column-in-patch, channel) order, the reference's `einsum('nchpwq->nhwpqc')`, which is also the
order of the HWIO patch kernel, so the MAE target and the patch embedding see the same pixel order.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from geolink_jax.nn import layers, partitioning


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A timm ViT shape. Presets: VIT_PRESETS['Ti'|'S'|'B'|'L'|'H']."""

    width: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0
    patch_size: int = 16
    image_size: int = 224
    in_channels: int = 3

    @property
    def grid(self):
        if self.image_size % self.patch_size:
            raise ValueError(f"image size {self.image_size} is not divisible by the patch size {self.patch_size}")
        return self.image_size // self.patch_size

    @property
    def num_patches(self):
        return self.grid * self.grid


VIT_PRESETS = {
    "Ti": ViTConfig(192, 12, 3),
    "S": ViTConfig(384, 12, 6),
    "B": ViTConfig(768, 12, 12),
    "L": ViTConfig(1024, 24, 16),
    "H": ViTConfig(1280, 32, 16, patch_size=14),
}


def patchify(images, patch_size):
    """images [B, H, W, C] → [B, (H/p)·(W/p), p·p·C] in (p, q, c) order."""
    b, h, w, c = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches, patch_size, grid_h, grid_w, channels):
    """Inverse of patchify: [B, gh·gw, p·p·C] → [B, gh·p, gw·p, C]."""
    b = patches.shape[0]
    p = patch_size
    x = patches.reshape(b, grid_h, grid_w, p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, grid_h * p, grid_w * p, channels)


class PatchEmbed(nnx.Module):
    """timm PatchEmbed (Conv2d k=s=p) as a matmul on flattened patches.

    proj.kernel [p, p, C, D] (HWIO = torch weight.permute(2, 3, 1, 0)), proj.bias [D]. Init: xavier_uniform on the
    [D, p·p·C] view (spec §3.10)."""

    def __init__(self, patch_size, in_channels, width, *, rngs, dtype=jnp.float32):
        self.patch_size = patch_size
        self.proj = nnx.Dict(
            kernel=layers.param(rngs, layers.xavier_uniform((0, 1, 2), (3,)),
                                (patch_size, patch_size, in_channels, width), (None, None, None, "embed")),
            bias=layers.param(rngs, layers.zeros, (width,), ("embed",)),
        )
        self.dtype = dtype

    def __call__(self, images):
        """images [B, H, W, C] → tokens [B, L, D] in row-major patch order."""
        x = patchify(images.astype(self.dtype), self.patch_size)
        kernel = self.proj["kernel"][...].reshape(-1, self.proj["kernel"].shape[-1]).astype(self.dtype)
        return x @ kernel + self.proj["bias"][...].astype(self.dtype)


class ViTEncoder(nnx.Module):
    """The timm ViT parts GeoLink uses: patch_embed and blocks (timm's own cls/pos/norm are not part of it).

    Blocks: pre-norm, LayerNorm eps 1e-6, exact GELU, qkv bias, trunc_normal(0.02) init."""

    def __init__(self, cfg: ViTConfig, *, rngs, dtype=jnp.float32, attention_impl=None):
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_channels, cfg.width, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List([
            layers.Block(cfg.width, cfg.num_heads, cfg.mlp_ratio, rngs=rngs, eps=1e-6, init=layers.trunc_normal(0.02),
                         dtype=dtype, attention_impl=attention_impl)
            for _ in range(cfg.depth)
        ])

    def __call__(self, x, taps=None):
        """x [B, T, D] tokens → [B, T, D] after every block; with `taps`, also {i: output of block i}."""
        return partitioning.run_blocks(self.blocks, x, taps=taps)
