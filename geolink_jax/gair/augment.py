"""GAIR's input transforms, as its research code applies them (torchvision on float tensors), split between host
and step: the host decodes, resizes, flips and makes every random draw; the jitted step normalises and jitters.

RS (Sentinel-2): per band clip to mean ± 2σ and scale to 8-bit levels (truncated, as its uint8 cast), / 255,
bicubic resize to the model size; in training, with p = 0.7, ColorJitter(brightness 0.2, contrast 0.2) on bands
1, 2, 3 of the selected bands (B03, B04, B05 for GAIR's ten: the indices their code uses).
SV (photos): (x − mean) / std in 0–255 space, bicubic resize to 224, in training a horizontal flip (p = 0.5) and,
with p = 0.3, ColorJitter(0.1, 0.1, 0.1, 0.1), applied to the *normalised* tensor as theirs does: torchvision's
float ops clamp to [0, 1] there, which GAIR's photos go through in 30% of training steps.

`jitter` is torchvision's float-tensor ColorJitter (brightness, contrast, saturation and hue, in the drawn order),
checked against torchvision in the tests.
"""

import jax.numpy as jnp
import numpy as np

# the research code's statistics (its ten bands, in GAIR_BANDS order; photo RGB in 0–255)
S2_MEAN = (1172.9397, 1378.0846, 1509.3327, 1750.0275, 2073.2758, 2207.3283, 2245.1629, 2284.6384, 2231.7283,
           1899.1932)
S2_STD = (706.6250, 720.1862, 783.1424, 707.1962, 714.2782, 748.1827, 852.3585, 762.0849, 690.0165, 669.9036)
SV_MEAN = (135.47184384, 142.28621995, 145.12271992)
SV_STD = (59.19978436, 59.35279219, 72.02295734)
RS_JITTER = dict(p=0.7, strength=(0.2, 0.2, 0.0, 0.0), channels=(1, 2, 3))
SV_JITTER = dict(p=0.3, strength=(0.1, 0.1, 0.1, 0.1))


def normalize_rs(x, mean, std):
    """Raw band values [..., C] → [0, 1] in 8-bit steps: clip to mean ± 2σ, scale, truncate to a level, / 255."""
    lo = np.asarray(mean, np.float32) - 2 * np.asarray(std, np.float32)
    hi = np.asarray(mean, np.float32) + 2 * np.asarray(std, np.float32)
    return np.floor(np.clip((np.asarray(x, np.float32) - lo) / (hi - lo) * 255.0, 0, 255)) / 255.0


def _grey(x):
    return 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _blend(a, b, f):
    return jnp.clip(f * a + (1.0 - f) * b, 0.0, 1.0)


def _rgb2hsv(x):
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = jnp.max(x, -1), jnp.min(x, -1)
    eqc = maxc == minc
    cr = maxc - minc
    s = cr / jnp.where(eqc, 1.0, maxc)
    div = jnp.where(eqc, 1.0, cr)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    h = ((maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
         + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc))
    return jnp.fmod(h / 6.0 + 1.0, 1.0), s, maxc


def _hsv2rgb(h, s, v):
    i = jnp.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.astype(jnp.int32) % 6
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    options = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return jnp.stack([jnp.select([i == k for k in range(6)], [o[c] for o in options]) for c in range(3)], -1)


def _op(x, k, f):
    if k == 0:
        return _blend(x, 0.0, f)
    if k == 1:
        return _blend(x, jnp.mean(_grey(x), axis=(-2, -1), keepdims=True)[..., None], f)
    if k == 2:
        return _blend(x, _grey(x)[..., None], f)
    h, s, v = _rgb2hsv(x)  # per pixel: the factor without its channel axis
    return _hsv2rgb(jnp.fmod(h + f[..., 0] + 1.0, 1.0), s, v)


def jitter(x, factors, order, apply):
    """torchvision ColorJitter on float images. x [..., H, W, 3]; factors float [..., 4] (brightness, contrast,
    saturation, hue), order int [..., 4] (the ops in the drawn order; identity factors for disabled ops are skipped
    by `enabled`), apply bool [...] (not drawn: unchanged, not even clamped)."""
    lead = factors.shape[:-1]
    out = x
    for j in range(4):  # position j of the drawn order: every op computed, the drawn one selected
        k_at = order[..., j]
        candidates = [_op(out, k, factors[..., k].reshape(*lead, 1, 1, 1)) for k in range(4)]
        enabled = jnp.take_along_axis(_enabled(factors), k_at[..., None], -1)[..., 0]
        chosen = jnp.select([(k_at == k).reshape(*lead, 1, 1, 1) for k in range(4)], candidates)
        out = jnp.where(enabled.reshape(*lead, 1, 1, 1), chosen, out)
    return jnp.where(apply.reshape(*lead, 1, 1, 1), out, x)


def _enabled(factors):
    """Which ops were drawn: the identity factors (1, 1, 1, 0) mark the disabled ones (see augment.draw_jitter)."""
    return factors != jnp.array([1.0, 1.0, 1.0, 0.0], factors.dtype)


def draw(rng, cfg):
    """One jitter draw: (apply, factors [4], order [4]) — torchvision's RandomApply then ColorJitter draws."""
    from geolink_jax.tiles.augment import draw_jitter

    apply = rng.random() < cfg["p"]
    factors, order = draw_jitter(rng, cfg["strength"]) if apply else (np.array([1, 1, 1, 0], np.float32),
                                                                         np.arange(4, dtype=np.int32))
    return np.bool_(apply), factors, order
