"""UperNet segmentation head on GeoLink's four feature maps (spec §3.9, the reference's `SegUPerNet`), NHWC.

    maps: 3 × [B, h, w, C_i] ViT block outputs + [B, h, w, C_f] hybrid map  (h = w = 14 at 224 px)
    neck (Feature2Pyramid, rescales 4, 2, 1, 0.5): ConvT2x2→BN→GELU→ConvT2x2 | ConvT2x2 | identity | maxpool 2
    PPM on the last level (pool scales 1, 2, 3, 6, PyTorch's overlapping adaptive-average bins) + bottleneck,
    laterals (1x1), top-down sum, FPN 3x3 convs, upsample all to level 0, fuse 3x3, Dropout2d, 1x1 classifier,
    bilinear to the image size → logits [B, H, W, num_classes].

Every conv has a bias (as the reference). BatchNorm normalises over batch × height × width: under `jax.jit` with a
batch sharded over the mesh's data axes the arrays are global, so the statistics are the whole global batch's — what
the reference's SyncBatchNorm computes — with no axis_name plumbing. Parameter names follow the reference's module
tree (neck.ops, psp_modules, bottleneck, lateral_convs, fpn_convs, fpn_bottleneck, conv_seg) so the converter maps
them one to one. PyTorch's default conv init (uniform ±1/√fan_in for weight and bias) is used.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclasses.dataclass(frozen=True)
class UperNetConfig:
    in_channels: tuple = (1024, 1024, 1024, 256)
    num_classes: int = 9
    channels: int = 512
    pool_scales: tuple = (1, 2, 3, 6)
    rescales: tuple = (4, 2, 1, 0.5)
    dropout: float = 0.1
    bn_momentum: float = 0.1  # PyTorch convention: running = (1 − m)·running + m·batch
    bn_eps: float = 1e-5


def adaptive_pool_bins(in_size, out_size):
    """PyTorch AdaptiveAvgPool bins along one axis: [floor(i·n/o), ceil((i+1)·n/o)) for i < o (they overlap)."""
    return [(math.floor(i * in_size / out_size), math.ceil((i + 1) * in_size / out_size)) for i in range(out_size)]


def adaptive_pool_matrix(in_size, out_size):
    """float32 [out, in] averaging matrix of those bins (static: built in numpy at trace time)."""
    m = np.zeros((out_size, in_size), np.float32)
    for i, (lo, hi) in enumerate(adaptive_pool_bins(in_size, out_size)):
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x, out_size):
    """[B, H, W, C] → [B, o, o, C], PyTorch AdaptiveAvgPool2d(o) semantics."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_size))
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_size))
    return jnp.einsum("ih,jw,bhwc->bijc", ph, pw, x)


def resize_bilinear(x, hw):
    """[B, h, w, C] → [B, H, W, C], bilinear with half-pixel centres (PyTorch align_corners=False, no antialias)."""
    if x.shape[1:3] == tuple(hw):
        return x
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), "bilinear", antialias=False)


def _torch_uniform(fan_in):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def conv(cin, cout, k, rngs):
    init = _torch_uniform(cin * k * k)
    return nnx.Conv(cin, cout, (k, k), padding="SAME", kernel_init=init, bias_init=init, rngs=rngs)


class ConvTranspose2x2(nnx.Module):
    """ConvTranspose2d(k=2, s=2) as an einsum + reshape: out[2i+a, 2j+b, o] = Σ_c x[i, j, c]·W[a, b, c, o] + b_o
    (kernel [2, 2, C_in, C_out] = torch weight [C_in, C_out, 2, 2] transposed (2, 3, 0, 1); no kernel flip)."""

    def __init__(self, cin, cout, *, rngs):
        init = _torch_uniform(cout * 4)  # torch's fan_in for a transposed conv weight [in, out, k, k] is out·k·k
        self.kernel = nnx.Param(init(rngs.params(), (2, 2, cin, cout)))
        self.bias = nnx.Param(init(rngs.params(), (cout,)))

    def __call__(self, x):
        b, h, w, _ = x.shape
        y = jnp.einsum("nijc,abco->niajbo", x, self.kernel[...].astype(x.dtype))
        return y.reshape(b, 2 * h, 2 * w, -1) + self.bias[...].astype(x.dtype)


class BatchNorm(nnx.Module):
    """PyTorch BatchNorm2d semantics on NHWC: normalise with the biased batch variance over (B, H, W); update the
    running mean and the running *unbiased* variance with `momentum` (flax's BatchNorm keeps the biased one, which
    differs a lot where B·H·W is small, e.g. the PPM's 1x1 pool: n = B). `use_running_average` is flipped by
    `model.train()` / `model.eval()`."""

    def __init__(self, c, cfg):
        self.scale = nnx.Param(jnp.ones((c,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((c,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((c,), jnp.float32))
        self.momentum, self.eps = cfg.bn_momentum, cfg.bn_eps
        self.use_running_average = False

    def __call__(self, x):
        x = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            n = x.shape[0] * x.shape[1] * x.shape[2]
            mean = x.mean(axis=(0, 1, 2))
            var = jnp.square(x - mean).mean(axis=(0, 1, 2))
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean)
            self.var[...] = (1 - m) * self.var[...] + m * jax.lax.stop_gradient(var) * n / max(n - 1, 1)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


class ConvBNReLU(nnx.Module):
    """Conv(k) → BatchNorm → ReLU, one of the reference's nn.Sequential(Conv2d, SyncBatchNorm, ReLU)."""

    def __init__(self, cin, cout, k, cfg, *, rngs):
        self.conv = conv(cin, cout, k, rngs)
        self.bn = BatchNorm(cout, cfg)

    def __call__(self, x):
        return jax.nn.relu(self.bn(self.conv(x)))


class Rescale4(nnx.Module):
    """ConvT2x2 → BN → GELU (exact) → ConvT2x2: [B, h, w, C] → [B, 4h, 4w, C]."""

    def __init__(self, c, cfg, *, rngs):
        self.up1 = ConvTranspose2x2(c, c, rngs=rngs)
        self.bn = BatchNorm(c, cfg)
        self.up2 = ConvTranspose2x2(c, c, rngs=rngs)

    def __call__(self, x):
        return self.up2(jax.nn.gelu(self.bn(self.up1(x)), approximate=False))


class MaxPool(nnx.Module):
    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        b, h, w, c = x.shape
        k = self.k
        return x[:, :h // k * k, :w // k * k].reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


class Identity(nnx.Module):
    def __call__(self, x):
        return x


def _neck_op(scale, c, cfg, rngs):
    if scale == 4:
        return Rescale4(c, cfg, rngs=rngs)
    if scale == 2:
        return ConvTranspose2x2(c, c, rngs=rngs)
    if scale == 1:
        return Identity()
    if scale in (0.5, 0.25):
        return MaxPool(int(round(1 / scale)))
    raise ValueError(f"UperNet neck: rescale {scale} is not one of 4, 2, 1, 0.5, 0.25")


class UperNet(nnx.Module):
    """maps (list of [B, h, w, C_i]) → logits float32 [B, H, W, num_classes] at `out_hw`.

    Train/eval follows nnx: `model.train()` uses batch statistics (and updates the running ones); `model.eval()`
    uses the running statistics. Dropout runs only when a dropout_key is given."""

    def __init__(self, cfg: UperNetConfig, *, rngs: nnx.Rngs):
        if len(cfg.in_channels) != len(cfg.rescales):
            raise ValueError(f"UperNet: {len(cfg.in_channels)} input maps but {len(cfg.rescales)} rescales")
        self.cfg = cfg
        ch = cfg.channels
        self.neck_ops = nnx.List([_neck_op(s, c, cfg, rngs) for s, c in zip(cfg.rescales, cfg.in_channels)])
        self.psp_modules = nnx.List([ConvBNReLU(cfg.in_channels[-1], ch, 1, cfg, rngs=rngs) for _ in cfg.pool_scales])
        self.bottleneck = ConvBNReLU(cfg.in_channels[-1] + len(cfg.pool_scales) * ch, ch, 3, cfg, rngs=rngs)
        self.lateral_convs = nnx.List([ConvBNReLU(c, ch, 1, cfg, rngs=rngs) for c in cfg.in_channels[:-1]])
        self.fpn_convs = nnx.List([ConvBNReLU(ch, ch, 3, cfg, rngs=rngs) for _ in cfg.in_channels[:-1]])
        self.fpn_bottleneck = ConvBNReLU(len(cfg.in_channels) * ch, ch, 3, cfg, rngs=rngs)
        self.dropout = nnx.Dropout(cfg.dropout, broadcast_dims=(1, 2))  # Dropout2d: whole channels
        self.conv_seg = conv(ch, cfg.num_classes, 1, rngs)

    def features(self, maps):
        """The fused decoder features [B, h0, w0, channels] (before dropout and the classifier)."""
        feats = [op(m) for op, m in zip(self.neck_ops, maps)]
        top = feats[-1]
        psp = [top] + [resize_bilinear(mod(adaptive_avg_pool(top, s)), top.shape[1:3])
                       for s, mod in zip(self.cfg.pool_scales, self.psp_modules)]
        laterals = [lat(f) for lat, f in zip(self.lateral_convs, feats[:-1])]
        laterals.append(self.bottleneck(jnp.concatenate(psp, axis=-1)))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_bilinear(laterals[i], laterals[i - 1].shape[1:3])
        outs = [fpn(lat) for fpn, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        outs = [resize_bilinear(o, outs[0].shape[1:3]) for o in outs]
        return self.fpn_bottleneck(jnp.concatenate(outs, axis=-1))

    def __call__(self, maps, out_hw, dropout_key=None):
        """dropout_key: a PRNG key turns Dropout2d on (training); None leaves it off."""
        feats = self.features([m.astype(jnp.float32) for m in maps])
        feats = self.dropout(feats, deterministic=dropout_key is None, rngs=dropout_key)
        return resize_bilinear(self.conv_seg(feats), out_hw)
