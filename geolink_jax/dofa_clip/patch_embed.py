"""DOFA's wavelength-conditioned dynamic patch embedding (DOFA-CLIP's `dofa_patch_embed.py`, torchgeo's
`DOFAEmbedding`): one module for any number of bands at any wavelengths.

Each band's central wavelength (µm) × 1000 → 1-D sin-cos code (128-d, [sin, cos], ω_i = 1/10000^(i/64)) → a residual
2-layer FC (ReLU) → a one-layer post-norm transformer (4 heads, FF 2048, exact GELU, LayerNorm eps 1e-5) over [128
learnable weight tokens, the C wavelength tokens, one bias token] → per band a k × k × D kernel
(fc_weight(out_band + code)) and from the bias token a D bias, both × 0.01 → a convolution with stride k. DOFA-CLIP
convolves without padding; torchgeo with padding 1 (`padding`). Token counts agree either way, so only values tell
them apart.

Images NHWC [B, H, W, C]; wavelengths float [C] in µm (band_valid bool [C]: False for padding bands); output tokens
[B, (H/k)·(W/k), D] row-major.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.nn import layers


@dataclasses.dataclass(frozen=True)
class PatchEmbedConfig:
    width: int = 768  # D
    patch_size: int = 16  # k
    code_dim: int = 128  # the wavelength code and the generator's width
    weight_tokens: int = 128
    heads: int = 4
    ff_dim: int = 2048
    padding: int = 0  # DOFA-CLIP: 0; torchgeo's DOFAEmbedding: 1
    scale: float = 0.01


def wavelength_code(wavelengths_um, dim, scale=1000.0):
    """float [C] µm → [C, dim]: sin-cos of µm × `scale` (1000 here; MaKA's translators use µm as is), sines
    first."""
    omega = 1.0 / 10000 ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim / 2.0))
    out = (wavelengths_um.astype(jnp.float32) * scale)[:, None] * omega[None]
    return jnp.concatenate([jnp.sin(out), jnp.cos(out)], -1)


class PostNormEncoderLayer(nnx.Module):
    """torch.nn.TransformerEncoderLayer(norm_first=False, activation='gelu', dropout 0) on [T, E] (one sequence)."""

    def __init__(self, dim, heads, ff_dim, *, rngs):
        init = layers.xavier_uniform()
        self.self_attn = layers.MultiHeadAttention(dim, heads, rngs=rngs,
                                                   qkv_init=layers.xavier_uniform((0,), (1, 2, 3)),
                                                   out_init=layers.xavier_uniform((0, 1), (2,)))
        self.linear1 = layers.Dense(dim, ff_dim, rngs=rngs, kernel_init=init)
        self.linear2 = layers.Dense(ff_dim, dim, rngs=rngs, kernel_init=init)
        self.norm1 = layers.LayerNorm(dim, eps=1e-5)
        self.norm2 = layers.LayerNorm(dim, eps=1e-5)

    def __call__(self, x, key_mask=None):
        """x [T, E]; key_mask bool [T] (False: a padding token no other token attends to)."""
        x = self.norm1(x + self.self_attn(x[None], key_mask=None if key_mask is None else key_mask[None])[0])
        return self.norm2(x + self.linear2(jax.nn.gelu(self.linear1(x), approximate=False)))


class DynamicPatchEmbed(nnx.Module):
    def __init__(self, cfg: PatchEmbedConfig, *, rngs):
        self.cfg = cfg
        e, d, k = cfg.code_dim, cfg.width, cfg.patch_size
        init = layers.xavier_uniform()  # DOFA initialises its generator's Linear layers xavier-uniform, bias 0.01
        bias01 = lambda key, shape, dtype=jnp.float32: jnp.full(shape, 0.01, dtype)  # noqa: E731
        self.fc1 = layers.Dense(e, e, rngs=rngs, kernel_init=init)
        self.fc2 = layers.Dense(e, e, rngs=rngs, kernel_init=init)
        self.encoder = PostNormEncoderLayer(e, cfg.heads, cfg.ff_dim, rngs=rngs)
        self.fc_weight = layers.Dense(e, k * k * d, rngs=rngs, axes=(None, "embed"), kernel_init=init)
        self.fc_bias = layers.Dense(e, d, rngs=rngs, axes=(None, "embed"), kernel_init=init)
        for dense in (self.fc1, self.fc2, self.fc_weight, self.fc_bias):
            dense.bias[...] = bias01(None, dense.bias.shape)
        self.weight_tokens = layers.param(rngs, layers.normal(0.02), (cfg.weight_tokens, e), (None, None))
        self.bias_token = layers.param(rngs, layers.normal(0.02), (1, e), (None, None))

    def kernel(self, wavelengths_um, band_valid=None):
        """float [C] µm → (conv kernel [k, k, C, D] (HWIO), bias [D]), both scaled. `band_valid` bool [C] marks
        padding bands (False): no token attends to them and their kernels are zero, so padding a band set to a
        bucket size leaves the embedding of the real bands exactly as it was."""
        cfg = self.cfg
        code = wavelength_code(wavelengths_um, cfg.code_dim)
        code = code + jax.nn.relu(self.fc2(jax.nn.relu(self.fc1(code))))
        tokens = jnp.concatenate([self.weight_tokens[...], code, self.bias_token[...]], 0)
        n = cfg.weight_tokens
        key_mask = None
        if band_valid is not None:
            key_mask = jnp.concatenate([jnp.ones(n, bool), band_valid, jnp.ones(1, bool)])
        out = self.encoder(tokens, key_mask)
        w = self.fc_weight(out[n:-1] + code)  # [C, k·k·D]
        if band_valid is not None:
            w = jnp.where(band_valid[:, None], w, 0.0)
        c, k = code.shape[0], cfg.patch_size
        kernel = w.reshape(c, k, k, cfg.width).transpose(1, 2, 0, 3) * cfg.scale
        return kernel, self.fc_bias(out[-1]) * cfg.scale

    def __call__(self, images, wavelengths_um, band_valid=None):
        kernel, bias = self.kernel(wavelengths_um, band_valid)
        k, p = self.cfg.patch_size, self.cfg.padding
        y = jax.lax.conv_general_dilated(images, kernel.astype(images.dtype), (k, k), [(p, p), (p, p)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = y + bias.astype(y.dtype)
        return y.reshape(y.shape[0], -1, y.shape[-1])
