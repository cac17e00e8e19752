"""GeoCLIP-style location encoder (GAIR's `location_encoder`).

(lon, lat) degrees → Equal Earth projection (x, y scaled by SF/180) → per branch σ ∈ {2^0, 2^4, 2^8}: random
Fourier features [cos(2π v Bᵀ), sin(2π v Bᵀ)] with a frozen Gaussian B [256, 2] (σ-scaled), MLP 512→1024→1024→1024
(ReLU) and a head 1024→out → the branches summed. B is a `FrozenParam`: loaded with the weights, never trained,
never re-sampled once built. GAIR takes (lon, lat) and has 768-wide heads; GeoCLIP takes (lat, lon) and has
512-wide heads (`lat_first`, `out_dim`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geolink_jax.nn import layers

# Equal Earth projection constants (Šavrič, Patterson & Jenny 2018), and GeoCLIP's scale factor
A1, A2, A3, A4 = 1.340264, -0.081106, 0.000893, 0.003796
SF = 66.50336


@dataclasses.dataclass(frozen=True)
class LocationEncoderConfig:
    sigmas: tuple = (1.0, 16.0, 256.0)
    frequencies: int = 256
    hidden: int = 1024
    out_dim: int = 768  # GeoCLIP: 512
    lat_first: bool = False  # GeoCLIP's (lat, lon) order; GAIR: (lon, lat)


def equal_earth(lat_deg, lon_deg):
    """Equal Earth (x, y) × SF/180, GeoCLIP's scaling. float [...] → [..., 2]."""
    lat, lon = jnp.deg2rad(lat_deg), jnp.deg2rad(lon_deg)
    theta = jnp.arcsin(jnp.sqrt(3.0) / 2 * jnp.sin(lat))
    t2 = theta * theta
    x = 2 * jnp.sqrt(3.0) * lon * jnp.cos(theta) / (3 * (9 * A4 * t2 ** 4 + 7 * A3 * t2 ** 3 + 3 * A2 * t2 + A1))
    y = theta * (A1 + A2 * t2 + A3 * t2 ** 3 + A4 * t2 ** 4)  # A1 θ + A2 θ³ + A3 θ⁷ + A4 θ⁹
    return jnp.stack([x, y], -1) * SF / 180.0


class Branch(nnx.Module):
    """One σ: RFF → 3 × (Linear, ReLU) → head."""

    def __init__(self, cfg: LocationEncoderConfig, sigma, *, rngs):
        # B ~ N(0, σ²) as GeoCLIP samples it; frozen from here on
        self.b = layers.FrozenParam(sigma * jax.random.normal(rngs.params(), (cfg.frequencies, 2), jnp.float32),
                             logical_axes=(None, None))
        widths = (2 * cfg.frequencies, cfg.hidden, cfg.hidden, cfg.hidden)
        self.mlp = nnx.List([layers.Dense(a, b, rngs=rngs, axes=(None, "mlp") if i == 0 else ("mlp", None),
                                          kernel_init=_torch_linear_init(a))
                             for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]))])
        self.head = layers.Dense(cfg.hidden, cfg.out_dim, rngs=rngs, axes=(None, "embed"),
                                 kernel_init=_torch_linear_init(cfg.hidden))

    def __call__(self, v):
        # float32 throughout: the σ = 256 branch's phases are large, bf16 would lose them
        vp = 2 * jnp.pi * v @ self.b[...].T
        x = jnp.concatenate([jnp.cos(vp), jnp.sin(vp)], -1)
        for dense in self.mlp:
            x = jax.nn.relu(dense(x))
        return self.head(x)


def _torch_linear_init(fan_in):
    """torch.nn.Linear's default weight init: U(±1/√fan_in)."""
    return layers.uniform(1.0 / np.sqrt(fan_in))


class LocationEncoder(nnx.Module):
    """coords float [..., 2] in degrees ((lon, lat); (lat, lon) with lat_first) → [..., out_dim]."""

    def __init__(self, cfg: LocationEncoderConfig, *, rngs):
        self.cfg = cfg
        self.branches = nnx.List([Branch(cfg, s, rngs=rngs) for s in cfg.sigmas])

    def __call__(self, coords):
        coords = coords.astype(jnp.float32)
        lat, lon = (coords[..., 0], coords[..., 1]) if self.cfg.lat_first else (coords[..., 1], coords[..., 0])
        v = equal_earth(lat, lon)
        return sum(branch(v) for branch in self.branches)
