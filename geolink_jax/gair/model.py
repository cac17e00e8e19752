"""GAIR (Liu et al., 2025): an RS encoder, a street-view (SV) encoder and a location encoder, aligned through NILI
queries of the RS token grid at the SV locations. Defaults are the research code that trained the released weights;
the later inference package's differences are flags (`rs.final_norm`, `nili_convention`).

Batch (leading B = RS patches, S = the SV budget per patch, padded):
  rs float [B, H, W, C] (normalised bands), sv float [B, S, 224, 224, 3] (normalised photos), sv_valid bool [B, S],
  sv_lonlat float [B, S, 2] (degrees), sv_rel float [B, S, 2] (the SV's relative (x, y) in its patch, see nili.py).

Loss = (CE(sv→rs) + CE(rs→sv) + L(sv, loc) + L(rs, loc)) / 2 − α·cos(sv, teacher_sv) − α·cos(rs, teacher_rs):
- CE: symmetric InfoNCE between the projected SV embedding and the NILI-queried RS embedding of every valid SV,
  fixed temperature 0.07, negatives within each per-device batch (as the reference's DDP, `ctx.batch_groups`);
- L(z, loc): InfoNCE of z against its own location (positive) and the `queue_size` past locations of a FIFO queue
  (negatives), re-encoded every step; the queue holds raw coordinates, is global (every device's SV), lives in the
  model state (checkpointed; a resumed run continues with it) and is updated after the loss with this step's valid
  SV locations;
- distillation to frozen teachers (`teacher_init`: copies of the initial encoders or weight files): the SV pooler
  output and the RS token mean, α = 0.2.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from geolink_jax.gair import nili
from geolink_jax.gair.augment import S2_MEAN, S2_STD
from geolink_jax.gair.encoders import RSEncoder, RSEncoderConfig, SVEncoder, SVEncoderConfig
from geolink_jax.gair.location import LocationEncoder, LocationEncoderConfig
from geolink_jax.nn import layers, losses
from geolink_jax.nn.layers import FrozenParam


@dataclasses.dataclass(frozen=True)
class EncoderInit:
    """Where the RS and SV encoders' initial weights come from, per role (student_init, teacher_init):
    "" (students only) the run's random initialisation; "student" (teachers only) a copy of the student's initial
    weights; or a weight file: RS reads CROMA's optical ViT (its release, torchgeo's `croma.ViT`, or GAIR's layout;
    a patch layer for another band count is re-initialised), SV an HF `ViTModel` (safetensors or torch file, or
    the model directory holding one)."""

    rs: str = ""
    sv: str = ""


@dataclasses.dataclass(frozen=True)
class GAIRConfig:
    """Every GAIR hyperparameter; defaults = the released GAIR."""

    rs: RSEncoderConfig = RSEncoderConfig()
    sv: SVEncoderConfig = SVEncoderConfig()
    location: LocationEncoderConfig = LocationEncoderConfig()
    query_mode: str = "nili"  # or the ablation baselines "bilinear", "bicubic" (always HEAD's coordinate mapping)
    nili_convention: str = "research"  # or "head" (GAIR's inference package), see gair/nili.py; NILI only
    temperature: float = 0.07  # fixed, for the RS↔SV and the location terms alike
    queue_size: int = 4096
    distill_weight: float = 0.2
    teachers: bool = True  # frozen teachers for the distillation terms
    # GAIR's research run: student_init.rs = CROMA's optical weights (10-band patch layer fresh), student SV random;
    # teacher_init.rs = "student", teacher_init.sv = google/vit-base-patch16-224-in21k. The defaults need no files.
    student_init: EncoderInit = EncoderInit()
    teacher_init: EncoderInit = EncoderInit(rs="student", sv="student")
    # "": a fresh location encoder (GAIR's research model); "geoclip": GeoCLIP's pretrained weights as its wheel ships
    # them, or a path to such a location_encoder_weights.pth: every weight but the heads (768 vs GeoCLIP's 512 wide)
    location_init: str = ""
    sv_budget: int = 32  # SV photos per RS patch (padded, with a validity mask)
    band_mean: tuple = S2_MEAN  # per-band statistics of the RS normalisation (the research code's, GAIR_BANDS order)
    band_std: tuple = S2_STD
    dtype: str = "float32"
    attention_impl: str | None = None


class LocationQueue(nnx.Variable):
    """Model state (not a parameter): the FIFO of past SV coordinates."""


class GAIR(nnx.Module):
    def __init__(self, cfg: GAIRConfig, *, rngs):
        if cfg.query_mode not in nili.MODES:
            raise ValueError(f"unknown query_mode {cfg.query_mode!r}; known: {', '.join(nili.MODES)}")
        if cfg.nili_convention not in nili.CONVENTIONS:
            raise ValueError(f"unknown nili_convention {cfg.nili_convention!r}; known: {', '.join(nili.CONVENTIONS)}")
        self.cfg = cfg
        dt = jnp.dtype(cfg.dtype)
        d = cfg.rs.width
        self.rs_encoder = RSEncoder(cfg.rs, rngs=rngs, dtype=dt, attention_impl=cfg.attention_impl)
        self.sv_encoder = SVEncoder(cfg.sv, rngs=rngs, dtype=dt, attention_impl=cfg.attention_impl)
        self.location_encoder = LocationEncoder(cfg.location, rngs=rngs)
        self.imnet = layers.Dense(9 * d + 2, d, rngs=rngs, axes=(None, "embed"), dtype=dt)
        self.sv_proj = layers.Dense(cfg.sv.width, cfg.sv.width, rngs=rngs, axes=("embed", "embed_out"), dtype=dt)
        if cfg.teachers:  # copies of the encoders as built; gair/family.build loads the files the config names
            self.teacher_rs = RSEncoder(cfg.rs, rngs=rngs, dtype=dt, attention_impl=cfg.attention_impl)
            self.teacher_sv = SVEncoder(cfg.sv, rngs=rngs, dtype=dt, attention_impl=cfg.attention_impl)
            nnx.update(self.teacher_rs, nnx.state(self.rs_encoder))
            nnx.update(self.teacher_sv, nnx.state(self.sv_encoder))
        # the reference starts its queue with random unit vectors (in degrees: points on the unit circle at 0, 0)
        q = jax.random.normal(rngs.params(), (cfg.queue_size, 2), jnp.float32)
        self.queue = LocationQueue(q / jnp.linalg.norm(q, axis=-1, keepdims=True))
        self.queue_ptr = LocationQueue(jnp.zeros((), jnp.int32))

    # ------------------------------------------------------------------ embeddings
    def rs_tokens(self, rs):
        """rs [B, H, W, C] → tokens [B, h, w, D] (the grid) and the RS embedding [B, D] (token mean)."""
        tokens = self.rs_encoder(rs)
        p = self.cfg.rs.patch_size
        grid = tokens.reshape(tokens.shape[0], rs.shape[1] // p, rs.shape[2] // p, tokens.shape[-1])
        return grid, tokens.mean(1)

    def query(self, grid, rel, mode=None):
        """grid [B, h, w, D], rel [B, S, 2] relative (x, y) → localized RS embeddings [B, S, D]."""
        mode = mode or self.cfg.query_mode
        # the research code has no bilinear/bicubic modes: they follow the inference package (HEAD's
        # interp_query_embedding: [−1, 1], x as the column) under either NILI convention
        convention = self.cfg.nili_convention if mode == "nili" else "head"
        pos = nili.grid_position(rel.astype(jnp.float32), convention)
        if mode == "nili":
            return nili.nili(grid, pos, self.imnet.kernel[...], self.imnet.bias[...],
                             offsets_col_first=self.cfg.nili_convention == "head")
        return nili.interpolate(grid, pos, mode)

    def sv_embed(self, sv, dropout_key=None):
        """sv [..., 224, 224, 3] → pooler output [..., D] (before the projection); dropout only with a key."""
        lead = sv.shape[:-3]
        pooled, _ = self.sv_encoder(sv.reshape(-1, *sv.shape[-3:]), dropout_key=dropout_key)
        return pooled.reshape(*lead, -1)

    def location_embed(self, lonlat):
        return self.location_encoder(lonlat)

    # ------------------------------------------------------------------ loss
    def loss(self, batch, ctx_groups=1, return_outputs=False, dropout_key=None):
        """dropout_key: the training step's key (the SV encoder's dropouts), None for a deterministic loss."""
        cfg = self.cfg
        b, s = batch["sv_valid"].shape
        if b * s > cfg.queue_size:
            raise ValueError(f"{b}×{s} SV slots per step exceed the location queue ({cfg.queue_size})")
        valid = batch["sv_valid"].reshape(-1)
        grid, rs_emb = self.rs_tokens(batch["rs"])
        queried = self.query(grid, batch["sv_rel"]).reshape(b * s, -1)
        sv_emb = self.sv_embed(batch["sv"], dropout_key).reshape(b * s, -1)
        sv_z = self.sv_proj(sv_emb)
        ce, acc = losses.contrastive_loss(sv_z, queried, valid, cfg.temperature, ctx_groups)

        lonlat = batch["sv_lonlat"].reshape(b * s, 2).astype(jnp.float32)
        loc_pos = _normalize(self.location_embed(lonlat))
        loc_neg = _normalize(self.location_embed(self.queue[...]))
        l_sv = _queue_infonce(_normalize(sv_z), loc_pos, loc_neg, valid, cfg.temperature)
        l_rs = _queue_infonce(_normalize(queried), loc_pos, loc_neg, valid, cfg.temperature)
        total = ce + 0.5 * (l_sv + l_rs)
        metrics = dict(clip=ce, loc_sv=l_sv, loc_rs=l_rs, sv_rs_acc=acc)
        if cfg.teachers and cfg.distill_weight:
            w = valid.astype(jnp.float32)
            t_sv, _ = self.teacher_sv(batch["sv"].reshape(-1, *batch["sv"].shape[-3:]))
            t_rs = self.teacher_rs(batch["rs"]).mean(1)
            cos_sv = (_cos(sv_emb, jax.lax.stop_gradient(t_sv)) * w).sum() / jnp.maximum(w.sum(), 1.0)
            cos_rs = _cos(rs_emb, jax.lax.stop_gradient(t_rs)).mean()
            total = total - cfg.distill_weight * (cos_sv + cos_rs)
            metrics.update(cos_teacher_sv=cos_sv, cos_teacher_rs=cos_rs)
        self._enqueue(lonlat, valid)
        metrics["loss"] = total
        if return_outputs:
            return total, dict(metrics, queried=queried, sv=sv_z, rs=rs_emb)
        return total, metrics

    def _enqueue(self, lonlat, valid):
        """FIFO: the valid coordinates go in at the pointer, in order (static shapes: padding slots are dropped by
        an out-of-range scatter index)."""
        k = self.cfg.queue_size
        ptr = self.queue_ptr[...]
        slot = jnp.where(valid, (ptr + jnp.cumsum(valid) - 1) % k, k)
        self.queue[...] = self.queue[...].at[slot].set(jax.lax.stop_gradient(lonlat), mode="drop")
        self.queue_ptr[...] = (ptr + valid.sum()) % k


def _normalize(x):
    return losses.l2_normalize(x.astype(jnp.float32))


def _cos(a, b):
    return (_normalize(a) * _normalize(b)).sum(-1)


def _queue_infonce(z, pos, neg, valid, temperature):
    """Mean over valid rows of −log softmax at the positive of [⟨z, pos⟩, ⟨z, neg_k⟩…] / T. z, pos [N, D]
    (normalised), neg [K, D]."""
    logits = jnp.concatenate([(z * pos).sum(-1, keepdims=True), z @ neg.T], -1) / temperature
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.zeros(z.shape[0], jnp.int32))
    w = valid.astype(jnp.float32)
    return (ce * w).sum() / jnp.maximum(w.sum(), 1.0)


def trainable(path, var):
    """nnx filter: every Param but the teachers and the frozen RFF matrices."""
    return (isinstance(var, nnx.Param) and not isinstance(var, FrozenParam)
            and not any(str(p).startswith("teacher_") for p in path))
