"""Every sharding decision in one place: the mesh, logical-axis rules → PartitionSpecs, batch sharding.

The mesh has three named axes, ('data', 'fsdp', 'tensor'). The batch is split over ('data', 'fsdp'). Parameters
carry logical axis names (geolink_jax.nn.layers); `rules` maps each name to a mesh axis or None. A dimension
whose size the mesh axis does not divide, or a mesh axis already used by an earlier dimension of the same array,
stays replicated, so tiny test models and odd widths always shard validly.
"""

import math

import jax
import numpy as np
from flax import nnx, traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from geolink_jax.nn.partitioning import BATCH_AXES, MESH_AXES


def make_mesh(shape, devices=None):
    """shape: {'data': n, 'fsdp': n, 'tensor': n} with at most one -1 (fill with the remaining devices)."""
    devices = devices if devices is not None else jax.devices()
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {shape}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {shape}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {len(devices)}")
    return jax.sharding.Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(axes, shape, rules, mesh):
    """Logical names of one array → PartitionSpec under `rules` (a sequence of (name, mesh axis | None))."""
    table = dict(rules)
    used, spec = set(), []
    for name, size in zip(axes, shape):
        mesh_axis = table.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
            spec.append(None)
            continue
        used.add(mesh_axis)
        spec.append(mesh_axis if mesh.shape[mesh_axis] > 1 else None)
    return P(*spec)


def param_shardings(state, mesh, rules):
    """An nnx State (abstract or concrete) → nested dict of NamedShardings in the `nnx.to_pure_dict` layout, from each
    variable's logical_axes (no names: replicated). The one place parameter and model-state shardings are made."""
    rules = [tuple(r) for r in rules]

    def one(var):
        axes = var.get_metadata().get("logical_axes") or (None,) * len(var.shape)
        return NamedSharding(mesh, logical_to_spec(axes, var.shape, rules, mesh))

    return traverse_util.unflatten_dict({path: one(var) for path, var in nnx.to_flat_state(state)})


def optimizer_shardings(tx, abstract_opt_state, param_shardings_, mesh):
    """Optimizer state shardings: every parameter-shaped leaf (moments, accumulated gradients) takes its
    parameter's sharding (optax's param-tree mapping); counters and other scalars are replicated."""
    import optax

    replicated = NamedSharding(mesh, P())
    return optax.tree_utils.tree_map_params(tx, lambda _, s: s, abstract_opt_state, param_shardings_,
                                            transform_non_params=lambda _: replicated)


def batch_sharding(mesh, ndim=1):
    """Leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def num_batch_shards(mesh):
    """Number of per-device batches: the reference's per-GPU batch groups (graph norm, InfoNCE negatives)."""
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch, mesh):
    """Host-local numpy pytree (leading axis = this host's batch) → global jax arrays sharded over the batch axes."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), np.asarray(x)),
        local_batch)
