"""DOFA-CLIP's text tower: open_clip's `TextTransformer` as SigLIP configures it (ViT-B-16-SigLIP,
ViT-SO400M-14-SigLIP-384): token + learned position embeddings, pre-LN blocks (LayerNorm eps 1e-6, exact GELU)
without a causal mask, a final LayerNorm, pooling of the last position (`pool="last"`; "argmax" takes the
end-of-text token, CLIP's choice), a Linear projection with bias.

tokens int32 [B, L] (L = context_length) → pooled and projected [B, embed_dim].
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from geolink_jax.nn import layers, partitioning


@dataclasses.dataclass(frozen=True)
class TextTowerConfig:
    """Defaults: open_clip ViT-B-16-SigLIP's text tower (SigLIP SentencePiece vocabulary of 32,000)."""

    vocab_size: int = 32000
    context_length: int = 64
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    embed_dim: int = 768  # the projection's output (= the image tower's width)
    pool: str = "last"  # or "argmax" (the highest token id: CLIP BPE's end-of-text)
    dtype: str = "float32"
    attention_impl: str | None = None


SO400M_TEXT = TextTowerConfig(width=1152, depth=27, heads=16, mlp_dim=4304, embed_dim=1152)


class TextTower(nnx.Module):
    def __init__(self, cfg: TextTowerConfig, *, rngs):
        self.cfg = cfg
        dt = jnp.dtype(cfg.dtype)
        self.token_embedding = layers.param(rngs, layers.normal(0.02), (cfg.vocab_size, cfg.width),
                                            ("vocab", "embed"))
        self.positional_embedding = layers.param(rngs, layers.normal(0.01), (cfg.context_length, cfg.width),
                                                 (None, "embed"))
        self.blocks = nnx.List([
            layers.Block(cfg.width, cfg.heads, cfg.mlp_dim / cfg.width, rngs=rngs, eps=1e-6,
                         init=layers.trunc_normal(0.02), dtype=dt, attention_impl=cfg.attention_impl)
            for _ in range(cfg.depth)])
        self.ln_final = layers.LayerNorm(cfg.width, eps=1e-6, axes=("embed",), dtype=dt)
        self.text_projection = layers.Dense(cfg.width, cfg.embed_dim, rngs=rngs, axes=("embed", "embed_out"),
                                            kernel_init=layers.normal(cfg.width ** -0.5), dtype=dt)

    def __call__(self, tokens):
        cfg = self.cfg
        x = jnp.take(self.token_embedding[...], tokens, axis=0).astype(jnp.dtype(cfg.dtype))
        x = x + self.positional_embedding[...].astype(x.dtype)
        x = partitioning.run_blocks(self.blocks, x)
        x = self.ln_final(x)
        if cfg.pool == "last":
            pooled = x[:, -1]
        elif cfg.pool == "argmax":
            pooled = jnp.take_along_axis(x, jnp.argmax(tokens, -1)[:, None, None], 1)[:, 0]
        else:
            raise ValueError(f"text pool {cfg.pool!r}: 'last' or 'argmax'")
        return self.text_projection(pooled)
