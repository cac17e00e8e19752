"""Logical axes of parameters and activations: the names model code annotates, their default mapping to the mesh
axes, and the activation constraint every block stack applies.

Model code imports this module, never `train/`: the trainer (`train/sharding.py`) turns these names into
PartitionSpecs for a concrete mesh.
"""

import math

import jax
from flax import nnx
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Default rules: FSDP shards the model width, tensor parallelism the attention heads and the MLP hidden units.
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_dim", None),
    ("qkv", None),
    ("embed_out", "tensor"),
    ("vocab", "tensor"),  # text token embeddings (DOFA-CLIP's 32,000 or 49,408 × width)
    ("patch_in", None),
    ("node_in", "fsdp"),
    ("node_hidden", None),
    ("gates", None),
    ("proj", None),
)


def constrain_batch(x):
    """Activations [B, …] inside a model: the batch axis over ('data', 'fsdp'), the rest replicated, when the step
    runs under a mesh with those axes (a no-op otherwise, and for a batch the axes do not divide). Without it XLA
    may keep FSDP-sharded weights in place and move activations instead (it did for small per-device batches), so
    the step would not be the FSDP the mesh asks for: parameters gathered for use, gradients reduce-scattered."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return x
    if x.shape[0] % math.prod(mesh.shape[a] for a in BATCH_AXES):
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES, *([None] * (x.ndim - 1))))


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # keep each block's input only: least memory, ~1/3 more FLOPs
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep the matmul outputs: recompute the rest
}


def run_blocks(blocks, x, taps=None, remat="none", **kwargs):
    """x [B, T, D] through each block in turn, its batch axis constrained before every block (`constrain_batch`);
    a `dropout_key` is folded with the block index. `remat` (REMAT_POLICIES): what of each block's activations the
    backward pass recomputes instead of keeping. Returns x, or (x, {i: output of block i for i in taps}) when
    `taps` is given."""
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat {remat!r}: one of {', '.join(REMAT_POLICIES)}")
    policy = REMAT_POLICIES[remat]
    outputs = {}
    key = kwargs.pop("dropout_key", None)
    for i, block in enumerate(blocks):
        if key is not None:  # each block its own dropout draws
            kwargs["dropout_key"] = jax.random.fold_in(key, i)
        if remat == "none":
            x = block(constrain_batch(x), **kwargs)
        else:  # the keyword arrays go in as arguments, so the checkpoint sees them as inputs, not constants
            x = nnx.remat(lambda blk, h, kw: blk(h, **kw), policy=policy)(block, constrain_batch(x), dict(kwargs))
        if taps is not None and i in taps:
            outputs[i] = x
    return x if taps is None else (x, outputs)
