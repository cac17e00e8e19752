"""optax AdamW with linear warmup + cosine decay, no weight decay on biases / norms / tokens (1-D or
broadcast-shaped parameters), global-norm clipping, optional gradient accumulation, and non-finite skipping."""

import optax
import jax
import jax.numpy as jnp


def decay_mask(params):
    """True where weight decay applies: matrices and kernels; False for biases, norm scales, cls/mask tokens and
    GAT attention vectors (everything with fewer than 2 non-unit dimensions)."""
    return jax.tree.map(lambda p: sum(d > 1 for d in jnp.shape(p)) >= 2, params)


def schedule(cfg, total_steps):
    warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=cfg.lr * cfg.get("end_lr_factor", 0.0))


def make_optimizer(cfg, total_steps):
    """cfg: lr, warmup_steps, weight_decay, b1, b2, clip_norm, accumulate (ml_collections or dict-like)."""
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
        optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                    mask=decay_mask),
    )
    if cfg.get("accumulate", 1) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate)
    return tx
