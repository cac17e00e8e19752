"""GeoLink's three losses (spec §4.3-4.5), as masked means with static shapes, in float32."""

import jax
import jax.numpy as jnp
import optax


def image_reconstruction_loss(pred, target, mask, norm_pix=True):
    """MAE loss on the removed patches.

    pred, target float [B, L, P]; mask float [B, L] (1 = removed). norm_pix normalises each target patch with its
    mean and UNBIASED variance + 1e-6 (torch.var default, as the reference). Returns a scalar; 0 when no patch is
    masked (mask ratio 0), where the reference divides by zero."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    if norm_pix:
        mean = target.mean(-1, keepdims=True)
        var = target.var(-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.square(pred - target).mean(-1)
    return (per_patch * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def l2_normalize(x):
    # max inside the sqrt: a zero vector (a sample without nodes) gets a finite gradient, not 0·inf = NaN.
    return x * jax.lax.rsqrt(jnp.maximum(jnp.square(x).sum(-1, keepdims=True), 1e-24))


def contrastive_loss(z_img, z_graph, valid, temperature=0.2, groups=1):
    """Symmetric InfoNCE between image and graph embeddings.

    z_img, z_graph float [B, D]; valid bool [B] (samples with at least one OSM node; the others are neither
    anchors nor negatives). groups splits the batch into equal slices that only see their own negatives: the
    reference's per-GPU batches (faithful: groups = number of per-device batches); groups=1 uses the whole
    batch. Returns (loss, image→graph top-1 accuracy)."""
    b = z_img.shape[0]
    if b % groups:
        raise ValueError(f"batch {b} is not divisible into {groups} contrastive groups")
    zi = l2_normalize(z_img.astype(jnp.float32)).reshape(groups, b // groups, -1)
    zg = l2_normalize(z_graph.astype(jnp.float32)).reshape(groups, b // groups, -1)
    v = valid.reshape(groups, b // groups)
    pair_ok = v[:, :, None] & v[:, None, :]
    logits = jnp.einsum("gid,gjd->gij", zi, zg) / temperature
    logits = jnp.where(pair_ok, logits, -1e9)
    labels = jnp.broadcast_to(jnp.arange(b // groups), (groups, b // groups))
    ce_img = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    ce_graph = optax.softmax_cross_entropy_with_integer_labels(jnp.swapaxes(logits, 1, 2), labels)
    w = v.astype(jnp.float32)
    n = jnp.maximum(w.sum(), 1.0)
    loss = 0.5 * ((ce_img * w).sum() + (ce_graph * w).sum()) / n
    accuracy = ((jnp.argmax(logits, -1) == labels) * w).sum() / n
    return loss, accuracy


def node_reconstruction_loss(pred, label, valid):
    """Mean over valid masked nodes of mean_512((label − pred)²). pred, label [B, K, F]; valid bool [B, K].

    Returns 0 when no node is valid (e.g. a batch without OSM nodes)."""
    per_node = jnp.square(label.astype(jnp.float32) - pred.astype(jnp.float32)).mean(-1)
    w = valid.astype(jnp.float32)
    return (per_node * w).sum() / jnp.maximum(w.sum(), 1.0)
