"""Full fine-tuning of any family's encoder for classification, with layer-wise learning-rate decay.

The encoder is a `FeatureFn` (downstream/features.py): its `apply(model, inputs)["pooled"]` feeds a linear head
(zero-initialised). Every Param of the encoder trains with AdamW (weight decay on matrices only, as MAE's and
BEiT's fine-tuning) under a warm-up + cosine schedule; the learning rate of a Param in block i of L is
lr · decay^(L − i), of the patch/position embeddings lr · decay^(L + 1), of what follows the blocks (final norm,
pooler) and of the head lr (BEiT's layer-wise decay, which MAE, SatMAE and PANGAEA's fine-tuning use).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

EMBEDDING_NAMES = ("patch_embed", "linear_input", "pos_embed", "cls_token", "reg_token", "embed")


def _key_name(k):
    return getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))


def layer_ids(params):
    """A pytree like `params` of each leaf's layer id: 0 embeddings, i + 1 block i (of any `blocks` list), L + 1 the
    rest; and L (the deepest block count)."""
    def block_of(path):
        names = [_key_name(k) for k in path]
        for a, b in zip(names, names[1:]):
            if a == "blocks" and isinstance(b, int):
                return b
        return None

    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    depth = 1 + max([b for b in map(block_of, paths) if b is not None], default=-1)

    def layer(path, _):
        b = block_of(path)
        if b is not None:
            return b + 1
        names = [str(_key_name(k)) for k in path]
        return 0 if any(n in EMBEDDING_NAMES for n in names) else depth + 1

    return jax.tree_util.tree_map_with_path(layer, params), depth


def classifier(fn, train_x, train_y, test_x, num_classes, steps=100, lr=5e-4, layer_decay=0.75, weight_decay=0.05,
               batch_size=32, warmup=0.1, seed=0):
    """Fine-tune `fn`'s encoder with a linear head on (train_x, train_y) → predicted classes of test_x [N_test]."""
    graphdef, params, rest = nnx.split(fn.model, nnx.Param, ...)
    width = fn(train_x[:1])["pooled"].shape[-1]
    head = dict(w=jnp.zeros((width, num_classes)), b=jnp.zeros(num_classes))
    ids, depth = layer_ids(params)
    groups = sorted(set(jax.tree.leaves(ids)))

    def opt(scale):
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr * scale, max(1, int(steps * warmup)), max(steps, 2))
        return optax.adamw(schedule, weight_decay=weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))

    labels = (jax.tree.map(str, ids), dict(w="head", b="head"))
    tx = optax.multi_transform({**{str(g): opt(layer_decay ** (depth + 1 - g)) for g in groups}, "head": opt(1.0)},
                               labels)
    trainable = (params, head)
    state = tx.init(trainable)

    def logits(trainable, x):
        p, h = trainable
        return fn.apply(nnx.merge(graphdef, p, rest), x)["pooled"].astype(jnp.float32) @ h["w"] + h["b"]

    @jax.jit
    def step(trainable, state, x, y):
        loss = lambda t: optax.softmax_cross_entropy_with_integer_labels(logits(t, x), y).mean()  # noqa: E731
        grads = jax.grad(loss)(trainable)
        updates, state = tx.update(grads, state, trainable)
        return optax.apply_updates(trainable, updates), state

    rng = np.random.default_rng(seed)
    n = len(train_x)
    batch = min(batch_size, n)
    for _ in range(steps):
        idx = rng.choice(n, batch, replace=False)
        trainable, state = step(trainable, state, fn.prepare(train_x[idx]), jnp.asarray(train_y[idx], jnp.int32))
    predict = jax.jit(lambda t, x: jnp.argmax(logits(t, x), -1))
    out = []
    for i in range(0, len(test_x), batch):
        chunk = np.resize(np.arange(i, min(i + batch, len(test_x))), batch)  # one static batch shape
        out.append(np.asarray(predict(trainable, fn.prepare(test_x[chunk])))[:min(batch, len(test_x) - i)])
    return np.concatenate(out)
