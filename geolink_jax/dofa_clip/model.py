"""The DOFA-CLIP model: the SigLIP image tower with DOFA's dynamic patch embedding, the SigLIP text tower, a
learnable logit scale and bias, and MaKA's translators (and online teachers, if any).

Loss inputs (after the host pipeline, see dofa_clip/pipeline.py), B image–text pairs of one band set (padded to a
band bucket of Cb channels):
  image float32 [B, S, S, Cb], wavelengths float32 [B, Cb] (µm; rows equal), band_valid bool [B, Cb],
  tokens int32 [B, L], teacher_bands int32 [B, 3] (online teachers' input bands),
  teacher_<name> float [B, T_t, D_t] for every cached teacher.
loss = sigmoid loss (blockwise across the batch axes when the batch spans devices) + MaKA.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.data.shards import DataError
from geolink_jax.dofa_clip import maka
from geolink_jax.dofa_clip.patch_embed import PatchEmbedConfig
from geolink_jax.dofa_clip.text import TextTower, TextTowerConfig
from geolink_jax.dofa_clip.towers import ImageTower, ImageTowerConfig
from geolink_jax.nn import layers
from geolink_jax.nn import sigmoid_loss as losses
from geolink_jax.nn.losses import l2_normalize


def bucket(channels, buckets):
    """The smallest band bucket that holds `channels` bands; more than the largest is a DataError."""
    for b in buckets:
        if channels <= b:
            return b
    raise DataError(f"{channels} bands: more than the largest band bucket ({buckets[-1]}); add a bucket to "
                           "model.band_buckets")


@dataclasses.dataclass(frozen=True)
class DOFACLIPConfig:
    """Defaults: GeoLB-ViT-B-16-SigLIP as their training script runs it (text tower locked, MaKA scale 1.0); the
    teachers are set by the named configs (dofa_clip_b16, dofa_clip_so400m)."""

    image: ImageTowerConfig = ImageTowerConfig(taps=(-1,))
    patch_padding: int = 0  # DOFA-CLIP: 0; torchgeo's DOFAEmbedding: 1
    text: TextTowerConfig = TextTowerConfig()
    # "sentencepiece:<path>" (SigLIP's spiece.model: 32,000 pieces, the text tower's vocabulary; no file ships with
    # the library, so the path must be given) or "clip_bpe[:<path>]" (49,408 tokens: text.vocab_size must match)
    tokenizer: str = "sentencepiece:"
    lock_text: bool = True  # their --lock-text: the text tower gets no gradient and no optimizer state
    init_logit_scale: float = math.log(10.0)
    init_logit_bias: float = -10.0
    logit_scale_max: float = math.log(100.0)  # clamp to [0, this] after every update (open_clip's train loop); 0: off
    teachers: tuple = ()  # maka.TeacherConfig
    maka_scale: float = 1.0  # their training script (the class default is 0.1)
    maka_tap: int = -1  # the student tokens the translators read: -1 the final LayerNorm's output, or a block index
    teacher_band_rule: str = "nearest_rgb"  # band counts their channel sampling does not cover (maka.teacher_bands)
    sigmoid_loss: str = "auto"  # "dense" | "blockwise" | "auto" (blockwise when the batch spans > 1 device)
    band_buckets: tuple = (1, 2, 3, 4, 8, 16, 32, 64, 128, 256)  # channel counts a batch is padded to

    def __post_init__(self):  # teachers from a plain config (lists of dicts) → TeacherConfigs
        object.__setattr__(self, "teachers", tuple(
            t if isinstance(t, maka.TeacherConfig) else maka.TeacherConfig(**t) for t in self.teachers))

    def bucket(self, channels):
        return bucket(channels, self.band_buckets)


class DOFACLIP(nnx.Module):
    def __init__(self, cfg: DOFACLIPConfig, *, rngs):
        self.cfg = cfg
        image = dataclasses.replace(cfg.image, taps=tuple(sorted(set(cfg.image.taps) | {cfg.maka_tap})))
        self.image = ImageTower(image, rngs=rngs, patch_cfg=PatchEmbedConfig(
            width=image.width, patch_size=image.patch_size, padding=cfg.patch_padding))
        self.text = TextTower(cfg.text, rngs=rngs)
        if cfg.lock_text:
            layers.freeze(self.text)
        self.logit_scale = nnx.Param(jnp.asarray(cfg.init_logit_scale, jnp.float32), logical_axes=())
        self.logit_bias = nnx.Param(jnp.asarray(cfg.init_logit_bias, jnp.float32), logical_axes=())
        self.translators = nnx.Dict({t.name: maka.Translator(image.width, t, rngs=rngs)
                                     for t in cfg.teachers if t.translate})
        self.teachers = nnx.Dict({t.name: layers.freeze(ImageTower(t.tower, rngs=rngs))
                                  for t in cfg.teachers if t.online})
        for t in cfg.teachers:
            if not t.translate and (t.grid != image.grid or t.width != image.width):
                raise ValueError(f"teacher {t.name}: translate=False needs the student's grid and width "
                                 f"({image.grid}² × {image.width}), it has {t.grid}² × {t.width}")

    def encode_image(self, image, wavelengths, band_valid=None):
        """image [B, S, S, Cb], wavelengths [Cb] → (L2-normalised embedding [B, D], taps)."""
        pooled, taps = self.image(image, wavelengths, band_valid)
        return l2_normalize(pooled.astype(jnp.float32)), taps

    def encode_text(self, tokens):
        return l2_normalize(self.text(tokens).astype(jnp.float32))

    def logits(self, img, txt):
        """Normalised embeddings → σ-logits [Bi, Bt] (exp(scale) ⟨x, y⟩ + bias)."""
        return jnp.exp(self.logit_scale[...]) * img @ txt.T + self.logit_bias[...]

    def teacher_features(self, batch):
        """{name: [B, T_t, D_t]}: cached features from the batch, online teachers run here (no gradient)."""
        out = {}
        for t in self.cfg.teachers:
            if not t.online:
                out[t.name] = batch[f"teacher_{t.name}"]
                continue
            x = jnp.take(batch["image"], batch["teacher_bands"][0], axis=-1)
            s = t.tower.image_size
            x = jax.image.resize(x, (x.shape[0], s, s, 3), "bilinear", antialias=False)
            _, taps = self.teachers[t.name](x)
            out[t.name] = jax.lax.stop_gradient(taps[-1])
        return out

    def loss(self, batch, ctx=None):
        cfg = self.cfg
        wl, valid = batch["wavelengths"][0], batch["band_valid"][0]
        img, taps = self.encode_image(batch["image"], wl, valid)
        txt = self.encode_text(batch["tokens"])
        if cfg.lock_text:  # no backward pass through a locked tower
            txt = jax.lax.stop_gradient(txt)
        mesh = getattr(ctx, "mesh", None)
        axes = tuple(a for a in getattr(ctx, "batch_axes", ()) if mesh is not None and a in mesh.shape)
        spread = math.prod(mesh.shape[a] for a in axes) if axes else 1
        if cfg.sigmoid_loss == "blockwise" or (cfg.sigmoid_loss == "auto" and spread > 1):
            clip = losses.sigmoid_loss_blockwise(img, txt, self.logit_scale[...], self.logit_bias[...], mesh, axes)
        else:
            clip = losses.sigmoid_loss(img, txt, self.logit_scale[...], self.logit_bias[...])
        metrics = dict(sigmoid=clip, logit_scale=jnp.exp(self.logit_scale[...]), logit_bias=self.logit_bias[...])
        total = clip
        if cfg.teachers:
            student = taps[cfg.maka_tap]
            preds = {t.name: self.translators[t.name](student, wl, valid) if t.translate else student
                     for t in cfg.teachers}
            distill, parts = maka.maka_loss(preds, self.teacher_features(batch), cfg.teachers, cfg.maka_scale)
            metrics.update(maka=distill, **{f"maka_{k}": v for k, v in parts.items()})
            total = total + distill
        return total, metrics
