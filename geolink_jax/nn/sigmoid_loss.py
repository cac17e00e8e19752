"""SigLIP's sigmoid loss, dense and blockwise across the batch axes (big_vision's chunked loss, open_clip's
`SigLipLoss` with bidirectional exchange).

loss = −Σ_{i,j} log σ(z_ij · (t ⟨x_i, y_j⟩ + b)) / B with z = +1 for a matching pair, −1 otherwise, over the global
batch of B image/text embeddings (L2-normalised by the caller), t = exp(logit_scale) — the mean over devices of
open_clip's per-device loss with the texts of every device.

`sigmoid_loss_blockwise` never holds more than a (B/n) × (B/n) block of logits on a device: each device scores its
images against its own texts, then passes the texts one device on around the ring of the batch axes (`ppermute`)
n − 1 times, and the sums meet in one psum. The backward (a custom VJP) sends the texts around the ring once more,
each with the gradient its block has gathered, which arrives home after a full turn: nothing per step is kept for the
backward (autodiff of the loop would keep every step's text block, B × D in all). Memory per device grows with B/n,
not B.
"""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def _block(x, y, scale, bias, positives):
    logits = scale * (x @ y.T) + bias
    z = jnp.where(positives & jnp.eye(x.shape[0], y.shape[0], dtype=bool), 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(z * logits.astype(jnp.float32)))


def _block_s(x, y, logit_scale, bias, positives):
    return _block(x, y, jnp.exp(logit_scale), bias, positives)


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
    rotate = lambda v: jax.lax.ppermute(v, axes, ring)  # noqa: E731

    def block_grads(x, y, s, b, own):
        return jax.value_and_grad(_block_s, argnums=(0, 1, 2, 3))(x, y, s, b, own)

    @jax.custom_vjp
    def partial_sum(x, y, s, b):
        """This device's images against every device's texts: Σ of its n blocks."""
        def step(_, carry):
            total, y = carry
            y = rotate(y)
            return total + _block_s(x, y, s, b, False), y

        total, _ = jax.lax.fori_loop(0, n - 1, step, (_block_s(x, y, s, b, True), y))
        return total

    def fwd(x, y, s, b):
        return partial_sum(x, y, s, b), (x, y, s, b)

    def bwd(res, g):
        # the texts go around the ring again; each carries the gradient its block has gathered so far, and after a
        # full turn arrives home with it: only one (B/n) × (B/n) block and O(B/n × D) embeddings are ever held
        x, y, s, b = res
        _, (dx, dy, ds, db) = block_grads(x, y, s, b, True)

        def step(_, carry):
            dx, y, acc, ds, db = carry
            y, acc = rotate(y), rotate(acc)
            _, (gx, gy, gs, gb) = block_grads(x, y, s, b, False)
            return dx + gx, y, acc + gy, ds + gs, db + gb

        dx, _, acc, ds, db = jax.lax.fori_loop(0, n - 1, step, (dx, y, dy, ds, db))
        acc = rotate(acc)  # the last step's gradient joins its owner
        return g * dx, g * acc, g * ds, g * db

    partial_sum.defvjp(fwd, bwd)

    def local(x, y, s, b):
        # scale and bias as per-device values: their gradients are per-device partial sums (the cast's transpose
        # sums them)
        s, b = (jax.lax.pcast(v, axes, to="varying") for v in (s, b))
        return jax.lax.psum(partial_sum(x, y, s, b), axes)

    spec = P(axes if len(axes) > 1 else axes[0])
    total = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, P(), P()), out_specs=P())(
        img, txt, logit_scale, logit_bias)
    return total / img.shape[0]
