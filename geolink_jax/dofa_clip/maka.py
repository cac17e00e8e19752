"""MaKA (modality-aware knowledge agglomeration): per-teacher translators from intermediate student tokens to a
teacher's token grid, and the distillation loss (DOFA-CLIP's `Translator`, `ModalityAwareConditionalLayerNorm`,
`WavelengthAwareEncoder`, `MDistillLoss`).

Translator, student tokens [B, h·w, D] (square grid) → [B, h_t·w_t, D_t]:
1. nearest resize of the grid to the teacher's (torch `F.interpolate` default: source index ⌊i · h / h_t⌋);
2. modality-conditional LayerNorm over the whole [h_t, w_t, D] of each sample (eps 1e-5, an elementwise affine
   of that shape) → (1 + γ) · x̂ + β, with (γ, β) [D] each = Linear(128 → 2D) of the wavelength prompt: the mean
   over the batch's bands of Linear(128 → 128) of the sin-cos code of each wavelength in µm (no × 1000 here);
3. a 3 × 3 convolution (padding 1) to the teacher's width.
A teacher with `translate=False` (their SigLIP teacher: same grid and width as the student) is compared with the
student tokens as they are.

Loss: scale · Σ_t w_t (MSE + SmoothL1(β = 1) + CosineEmbedding(flattened, target 1)), each term a mean.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from geolink_jax.dofa_clip.patch_embed import wavelength_code
from geolink_jax.dofa_clip.towers import ImageTowerConfig
from geolink_jax.nn import layers

PROMPT_DIM = 128
RGB_UM = (0.665, 0.56, 0.49)


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """One teacher: its features are `teacher_<name>` [B, tokens, width] in the batch (cached in the shards), or
    computed in the step by its JAX-native tower (`online`: on the student's crop, as their training does)."""

    name: str
    tokens: int  # a square grid (729 = 27 × 27)
    width: int
    weight: float = 1.0
    translate: bool = True
    image_size: int = 224  # the teacher's input size for the cache job (an online teacher: its tower's)
    tower: object = None  # towers.ImageTowerConfig of its JAX-native tower (patch_embed="rgb", taps=(-1,))
    timm: str = ""  # or a timm model name (the cache job runs it in torch; e.g. vit_large_patch16_384)
    weights: str = ""  # that teacher's checkpoint (open_clip/timm layout for `tower`; timm's for `timm`); "" = random
    online: bool = False  # run `tower` in the train step instead of reading cached features

    def __post_init__(self):
        if self.online and self.tower is None:
            raise ValueError(f"teacher {self.name}: online=True needs a JAX-native `tower`")
        if isinstance(self.tower, dict):
            from geolink_jax.dofa_clip.towers import ImageTowerConfig
            from geolink_jax.nn.config_dict import config_from_dict

            object.__setattr__(self, "tower", config_from_dict(ImageTowerConfig, self.tower, f"teacher {self.name}"))

    @property
    def grid(self):
        g = int(round(self.tokens ** 0.5))
        if g * g != self.tokens:
            raise ValueError(f"teacher {self.name}: {self.tokens} tokens are not a square grid")
        return g


# Their three teachers (MDistillLoss), for the so400m/14 @384 student (27 × 27 tokens of width 1152), each with its
# JAX-native tower (timm's architecture; weights: timm's checkpoint of `timm`, or open_clip's for SigLIP), so that
# it can be cached (`geolink-jax dofa-teachers`) or run in the step on the student's crop (online).
_L = dict(width=1024, depth=24, heads=16, mlp_dim=4096, patch_embed="rgb", taps=(-1,), class_token=True, head="none")
SIGLIP_SO400M = TeacherConfig("siglip_so400m_patch14_384", 729, 1152, weight=2.0, translate=False, image_size=384,
                              tower=ImageTowerConfig(width=1152, depth=27, heads=16, mlp_dim=4304, patch_size=14,
                                                     image_size=384, patch_embed="rgb", taps=(-1,)),
                              timm="vit_so400m_patch14_siglip_384")
DINOV2_L_REG = TeacherConfig("dinov2_vitl14_reg", 729, 1024, image_size=378, timm="vit_large_patch14_reg4_dinov2",
                             tower=ImageTowerConfig(patch_size=14, image_size=378, reg_tokens=4, no_embed_class=True,
                                                    layer_scale=1e-5, **_L))
VIT_L_AUGREG = TeacherConfig("vit_large_patch16_384_augreg_in21k_ft_in1k", 576, 1024, image_size=384,
                             timm="vit_large_patch16_384.augreg_in21k_ft_in1k",
                             tower=ImageTowerConfig(patch_size=16, image_size=384, **_L))
# Their (commented) base teacher, for the B/16 @224 student (14 × 14 × 768).
SIGLIP_B16 = TeacherConfig("siglip_base_patch16_224", 196, 768, weight=2.0, translate=False, image_size=224,
                           tower=ImageTowerConfig(patch_embed="rgb", taps=(-1,)), timm="vit_base_patch16_siglip_224")


def teacher_bands(wavelengths_um, rule="nearest_rgb"):
    """Their channel sampling for the 3-channel teachers → 3 band indices: 2 bands (SAR) → [0, 1, 1]; 202
    (hyperspectral) → [47, 29, 8]; 9 → the first three; 3 → as is. Other counts (their code passes them on as
    they are, which a 3-channel teacher cannot take): `rule` "nearest_rgb" takes the bands nearest 665/560/490 nm,
    "first3" the first three."""
    wl = [float(w) for w in wavelengths_um]
    c = len(wl)
    if c == 2:
        return [0, 1, 1]
    if c == 202:
        return [47, 29, 8]
    if c in (3, 9) or (rule == "first3" and c >= 3):
        return [0, 1, 2]
    if c == 1:
        return [0, 0, 0]
    if rule != "nearest_rgb":
        raise ValueError(f"teacher_band_rule {rule!r}: 'nearest_rgb' or 'first3'")
    return [min(range(c), key=lambda i: abs(wl[i] - target)) for target in RGB_UM]


def nearest_resize(grid, size):
    """[B, h, w, D] → [B, size, size, D], torch's default `F.interpolate` (nearest, source ⌊i · h / size⌋)."""
    h, w = grid.shape[1:3]
    rows = jnp.minimum(jnp.floor(jnp.arange(size) * (h / size)).astype(jnp.int32), h - 1)
    cols = jnp.minimum(jnp.floor(jnp.arange(size) * (w / size)).astype(jnp.int32), w - 1)
    return grid[:, rows][:, :, cols]


class Translator(nnx.Module):
    def __init__(self, width, teacher: TeacherConfig, *, rngs):
        g, d, dt = teacher.grid, width, teacher.width
        self.grid = g
        self.wave_proj = layers.Dense(PROMPT_DIM, PROMPT_DIM, rngs=rngs, kernel_init=layers.uniform(PROMPT_DIM ** -0.5))
        self.prompt_fc = layers.Dense(PROMPT_DIM, 2 * d, rngs=rngs, kernel_init=layers.uniform(PROMPT_DIM ** -0.5))
        self.norm_scale = nnx.Param(jnp.ones((g, g, d), jnp.float32), logical_axes=(None, None, "embed"))
        self.norm_bias = nnx.Param(jnp.zeros((g, g, d), jnp.float32), logical_axes=(None, None, "embed"))
        fan_in = 9 * d
        self.conv = nnx.Dict(
            kernel=layers.param(rngs, layers.uniform(fan_in ** -0.5), (3, 3, d, dt),
                                (None, None, "embed", "embed_out")),
            bias=layers.param(rngs, layers.uniform(fan_in ** -0.5), (dt,), ("embed_out",)))

    def prompt(self, wavelengths_um, band_valid=None):
        """The wavelength prompt [128]: mean over the (valid) bands of Linear(sin-cos(µm))."""
        code = self.wave_proj(wavelength_code(wavelengths_um, PROMPT_DIM, scale=1.0))
        valid = jnp.ones(code.shape[0], bool) if band_valid is None else band_valid
        return jnp.sum(jnp.where(valid[:, None], code, 0.0), 0) / jnp.maximum(valid.sum(), 1)

    def __call__(self, tokens, wavelengths_um, band_valid=None):
        b, t, d = tokens.shape
        h = int(round(t ** 0.5))
        x = nearest_resize(tokens.reshape(b, h, h, d).astype(jnp.float32), self.grid)
        mean = x.mean((1, 2, 3), keepdims=True)
        var = jnp.square(x - mean).mean((1, 2, 3), keepdims=True)
        x = (x - mean) * jax.lax.rsqrt(var + 1e-5) * self.norm_scale[...] + self.norm_bias[...]
        gamma, beta = jnp.split(self.prompt_fc(self.prompt(wavelengths_um, band_valid)), 2)
        x = x + gamma * x + beta
        y = jax.lax.conv_general_dilated(x, self.conv["kernel"][...], (1, 1), [(1, 1), (1, 1)],
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) + self.conv["bias"][...]
        return y.reshape(b, -1, y.shape[-1])


def distill_terms(pred, target):
    """pred, target float [B, T, D] → (MSE, SmoothL1, cosine embedding loss), each a mean (torch's reductions)."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    d = pred - target
    mse = jnp.mean(d * d)
    ad = jnp.abs(d)
    l1 = jnp.mean(jnp.where(ad < 1.0, 0.5 * d * d, ad - 0.5))
    p = pred.reshape(pred.shape[0], -1)
    q = target.reshape(target.shape[0], -1)
    p = p / jnp.maximum(jnp.linalg.norm(p, axis=-1, keepdims=True), 1e-12)  # F.normalize
    q = q / jnp.maximum(jnp.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    # CosineEmbeddingLoss(target 1) = 1 − cos, with torch's 1e-12 inside the cosine's norms
    cos = jnp.sum(p * q, -1) / jnp.sqrt((jnp.sum(p * p, -1) + 1e-12) * (jnp.sum(q * q, -1) + 1e-12))
    return mse, l1, jnp.mean(1.0 - cos)


def maka_loss(preds, targets, teachers, scale):
    """preds/targets {teacher name: [B, T, D]} → (scale · Σ w_t (MSE + SmoothL1 + cos), {name: that teacher's sum})."""
    total, parts = 0.0, {}
    for t in teachers:
        part = sum(distill_terms(preds[t.name], targets[t.name]))
        parts[t.name] = part
        total = total + scale * t.weight * part
    return total, parts
