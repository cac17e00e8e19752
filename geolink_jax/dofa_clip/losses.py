"""SigLIP's sigmoid loss, dense and blockwise across the batch axes (big_vision's chunked loss, open_clip's
`SigLipLoss` with bidirectional exchange).

loss = −Σ_{i,j} log σ(z_ij · (t ⟨x_i, y_j⟩ + b)) / B with z = +1 for a matching pair, −1 otherwise, over the global
batch of B image/text embeddings (L2-normalised by the caller), t = exp(logit_scale) — the mean over devices of
open_clip's per-device loss with the texts of every device.

`sigmoid_loss_blockwise` never holds more than a (B/n) × (B/n) block of logits on a device: each device scores its
images against its own texts, then passes the texts one device on around the ring of the batch axes (`ppermute`)
n − 1 times, and the sums meet in one psum. Memory per device grows with B/n, not B.
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _block(x, y, scale, bias, positives):
    logits = scale * (x @ y.T) + bias
    z = jnp.where(positives & jnp.eye(x.shape[0], y.shape[0], dtype=bool), 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(z * logits.astype(jnp.float32)))


def sigmoid_loss(img, txt, logit_scale, logit_bias):
    """Dense: img, txt float [B, D] (normalised) → scalar."""
    return _block(img, txt, jnp.exp(logit_scale), logit_bias, True) / img.shape[0]


def sigmoid_loss_blockwise(img, txt, logit_scale, logit_bias, mesh, batch_axes=("data", "fsdp")):
    """The same loss with img, txt sharded over `batch_axes` of `mesh` (B divisible by their size)."""
    axes = tuple(a for a in batch_axes if a in mesh.shape)
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    ring = [(j, (j + 1) % n) for j in range(n)]

    # the backward recomputes each block's logits instead of keeping all n blocks (which would be B²/n again)
    block = jax.checkpoint(_block, static_argnums=(4,))

    def local(x, y, s, b):
        scale = jnp.exp(s)

        def step(_, carry):
            total, y = carry
            y = jax.lax.ppermute(y, axes, ring)
            return total + block(x, y, scale, b, False), y

        total = block(x, y, scale, b, True)  # own texts: the positives
        total, _ = jax.lax.fori_loop(0, n - 1, step, (total, y))
        return jax.lax.psum(total, axes)

    spec = P(axes if len(axes) > 1 else axes[0])
    total = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P())(
        img, txt, logit_scale, logit_bias)
    return total / img.shape[0]
