"""Masked-autoencoder image pretraining (the GeoLink paper's unimodal baseline; spec §3.1-§3.2, §4.1): the sparse
masked ViT encoder and the MAE decoder. `ImageMAE` is also the image branch of GeoLink, which subclasses it, so the
two share parameter names (and so the timm converter) one-to-one.
"""

import dataclasses

import jax.numpy as jnp
from flax import nnx

from geolink_jax.nn import layers, losses, masking, partitioning, pos_embed
from geolink_jax.nn.vit import VIT_PRESETS, ViTConfig, ViTEncoder, patchify


@dataclasses.dataclass(frozen=True)
class MAEConfig:
    """Every hyperparameter of the image branch; defaults are the reference's (spec §3.1, §3.2, §4.1)."""

    vit: ViTConfig = VIT_PRESETS["L"]
    dtype: str = "float32"  # compute dtype; parameters are always float32
    attention_impl: str | None = None  # jax.nn.dot_product_attention implementation (None/'xla'/'cudnn')
    decoder_width: int = 512
    decoder_depth: int = 2
    decoder_heads: int = 16
    mlp_ratio: float = 4.0  # of the decoder blocks
    img_mask_ratio: float = 0.75
    mask_scale: int = 1  # mask blocks of mask_scale × mask_scale patches
    norm_pix_loss: bool = True


class ImageMAE(nnx.Module):
    """Sparse masked ViT + MAE decoder. Images float [B, H, W, C] (ImageNet-normalised, NHWC)."""

    def __init__(self, cfg: MAEConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = jnp.dtype(cfg.dtype)
        v = cfg.vit
        d = v.width
        self.img_encoder = ViTEncoder(v, rngs=rngs, dtype=dt, attention_impl=cfg.attention_impl)
        self.cls_token = layers.param(rngs, layers.normal(0.02), (1, 1, d), (None, None, "embed"))
        self.img_norm = layers.LayerNorm(d, eps=1e-5, axes=("embed",), dtype=dt)

        dw = cfg.decoder_width
        self.img_decoder_mlp = layers.Dense(d, dw, rngs=rngs, axes=("embed", "embed_out"), dtype=dt)
        self.img_mask_token = layers.param(rngs, layers.normal(0.02), (1, 1, dw), (None, None, "embed"))
        self.img_cross_modal_decoder = nnx.List([
            layers.Block(dw, cfg.decoder_heads, cfg.mlp_ratio, rngs=rngs, eps=1e-5, init=None, dtype=dt,
                         attention_impl=cfg.attention_impl)
            for _ in range(cfg.decoder_depth)
        ])
        self.img_decoder_norm = layers.LayerNorm(dw, eps=1e-5, axes=("embed",), dtype=dt)
        self.img_decoder_pred = layers.Dense(dw, v.patch_size ** 2 * v.in_channels, rngs=rngs,
                                             axes=("embed", "patch_in"), dtype=dt)

    def _grid(self, images):
        p = self.cfg.vit.patch_size
        h, w = images.shape[1:3]
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} is not divisible by the patch size {p}")
        return h // p, w // p

    def _embed_patches(self, images):
        """images → (patch tokens + fixed position table [B, L, D], (grid_h, grid_w))."""
        gh, gw = self._grid(images)
        x = self.img_encoder.patch_embed(images)
        table = pos_embed.image_table(self.cfg.vit.width, gh, gw)
        return x + jnp.asarray(table[1:], x.dtype), (gh, gw)

    def _with_cls(self, x):
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (x.shape[0], 1, x.shape[2]))
        return jnp.concatenate([cls, x], axis=1)

    def encode_image(self, images, key=None, mask_ratio=None, taps=None):
        """Masked image encoding (spec §3.1, §4.1).

        Returns a dict: tokens [B, 1+K, D] after img_norm (cls first, then the K kept tokens in shuffled order),
        ids_keep int32 [B, K], ids_restore int32 [B, L], mask float32 [B, L] (1 = removed), grid (gh, gw).
        mask_ratio 0 (or key None) keeps every token in order. `taps`: block indices whose raw outputs (cls first,
        no norm) come back as taps {i: [B, 1+K, D]}."""
        mask_ratio = self.cfg.img_mask_ratio if mask_ratio is None else mask_ratio
        x, grid = self._embed_patches(images)
        b, num_tokens = x.shape[:2]
        if mask_ratio > 0 and key is not None:
            noise = masking.token_noise(key, b, *grid, mask_scale=self.cfg.mask_scale)
            ids_keep, ids_restore, mask = masking.token_mask(noise, masking.num_kept_tokens(num_tokens, mask_ratio))
            x = masking.gather_tokens(x, ids_keep)
        else:
            ids_keep = ids_restore = jnp.broadcast_to(jnp.arange(num_tokens, dtype=jnp.int32), (b, num_tokens))
            mask = jnp.zeros((b, num_tokens), jnp.float32)
        out = {}
        if taps is None:
            x = self.img_encoder(self._with_cls(x))
        else:
            x, out["taps"] = self.img_encoder(self._with_cls(x), taps=taps)
        return dict(tokens=self.img_norm(x), ids_keep=ids_keep, ids_restore=ids_restore, mask=mask, grid=grid, **out)

    def decode_image(self, tokens, ids_restore, grid):
        """MAE decoder (spec §3.2): tokens [B, 1+K, D] → predicted patches [B, L, p·p·C] (cls dropped)."""
        x = self.img_decoder_mlp(tokens)
        body = masking.unshuffle(x[:, 1:], self.img_mask_token[0, 0], ids_restore)
        x = jnp.concatenate([x[:, :1], body], axis=1)
        x = x + jnp.asarray(pos_embed.image_table(self.cfg.decoder_width, *grid), x.dtype)
        x = partitioning.run_blocks(self.img_cross_modal_decoder, x)
        return self.img_decoder_pred(self.img_decoder_norm(x))[:, 1:]

    def loss(self, images, key, *, train=True, return_outputs=False):
        """MAE loss (norm-pix MSE on the removed patches). Returns (loss, aux): aux has img_loss and, if
        return_outputs, pred [B, L, p·p·C] and mask [B, L]."""
        enc = self.encode_image(images, key)
        pred = self.decode_image(enc["tokens"], enc["ids_restore"], enc["grid"])
        img_loss = losses.image_reconstruction_loss(pred, patchify(images, self.cfg.vit.patch_size), enc["mask"],
                                                    self.cfg.norm_pix_loss)
        aux = dict(img_loss=img_loss)
        if return_outputs:
            aux.update(pred=pred, mask=enc["mask"])
        return img_loss, aux
