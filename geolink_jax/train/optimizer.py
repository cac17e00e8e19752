"""optax AdamW with linear warmup + cosine decay, no weight decay on biases / norms / tokens (1-D or
broadcast-shaped parameters), global-norm clipping, optional gradient accumulation, and non-finite skipping."""

import jax
import jax.numpy as jnp
import optax


def decay_mask(params):
    """True where weight decay applies: matrices and kernels; False for biases, norm scales, cls/mask tokens and
    GAT attention vectors (everything with fewer than 2 non-unit dimensions)."""
    return jax.tree.map(lambda p: sum(d > 1 for d in jnp.shape(p)) >= 2, params)


def schedule(cfg, total_steps, lr, warmup_steps):
    """Linear warmup to `lr`, cosine to lr·end_lr_factor at the last step (lr, warmup: config.derive's values).
    Steps count train steps; the schedule counts optimizer updates (one every `accumulate` steps: optax.MultiSteps
    advances the inner schedule only on updates), so both lengths are divided by it."""
    k = max(int(cfg.get("accumulate", 1)), 1)
    total_steps, warmup_steps = -(-int(total_steps) // k), int(warmup_steps) // k
    warmup = min(int(warmup_steps), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=lr * cfg.get("end_lr_factor", 0.0))


def make_optimizer(cfg, total_steps, lr, warmup_steps):
    """cfg: weight_decay, b1, b2, eps, clip_norm, accumulate, end_lr_factor (ml_collections or dict-like); total_steps,
    lr (peak) and warmup_steps come from config.derive."""
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity(),
        optax.adamw(schedule(cfg, total_steps, lr, warmup_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.get("eps", 1e-8),
                    weight_decay=cfg.weight_decay, mask=decay_mask),
    )
    if cfg.get("accumulate", 1) > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accumulate)
    return tx
