"""Weight merging for any family: model soups, task arithmetic, TIES and progressive merging of weights that share
one model config (`geolink-jax merge`).

    merged = merge.merge(method, models, base=None, coefficients=None, scale=1.0, density=0.2)

Every input is a `params_store.Weights` (a converted directory, a pretraining workdir or any file `convert import`
reads, loaded by the caller); `params` are nested dicts of arrays with the same tensors. Per tensor θ:
- average          Σ_i c_i θ_i (c: the coefficients, default 1/n each: a uniform soup).
- task_arithmetic  θ_base + scale · Σ_i c_i (θ_i − θ_base) (Ilharco et al. 2023; c default 1 each).
- ties             θ_base + scale · τ, τ the TIES merge (Yadav et al. 2023) of the task vectors τ_i = θ_i − θ_base:
                   each trimmed to its `density` largest magnitudes (per tensor, as mergekit, not over the whole
                   model), a sign elected per element (the sign of Σ_i of the trimmed τ_i), and the mean of the
                   trimmed values that agree with it (0 where none does).
- progressive      a sequence of pairwise interpolations: m_0 = the base (or the first model), then
                   m_k = (1 − c_k) m_{k−1} + c_k θ_k for each following model in order (c default 1/(k+1): the
                   running mean, so equal coefficients give the uniform soup).
Parameters the family does not train (`Family.trainable`: DOFA-CLIP's locked text tower and teachers, fixed
features) are not merged: they are taken from the reference (the base, or the first model), and an input whose
frozen tensors differ from it is refused, since a merge of such models has no meaning. Non-parameter state (GAIR's
location queue, batch statistics) is not part of weights and is not carried. Arithmetic is float32, streamed over
the inputs (loaded one at a time; see `merge`): numpy on the host, or jax.numpy on arrays that `load_sharded`
restored into their shards over a mesh (`--mesh`); the result is cast back to each tensor's dtype.
"""

import hashlib
import pathlib

import numpy as np
from flax import traverse_util

from geolink_jax import family as family_lib

METHODS = ("average", "task_arithmetic", "ties", "progressive")
NEEDS_BASE = ("task_arithmetic", "ties")


class MergeError(ValueError):
    """Inputs that cannot be merged (one line; nothing is written)."""


def fingerprint(params):
    """A short SHA-256 of a param tree's names, shapes, dtypes and per-array fingerprints (train/checkpoint.py's,
    computed where the arrays are: a sharded tree is never gathered to the host)."""
    from geolink_jax.train.checkpoint import fingerprints

    flat = traverse_util.flatten_dict(params)
    prints = fingerprints({_name(k): v for k, v in flat.items()})
    h = hashlib.sha256()
    for key in sorted(flat, key=_name):
        h.update(f"{_name(key)}:{np.shape(flat[key])}:{flat[key].dtype}:{prints[_name(key)][0]}".encode())
    return h.hexdigest()[:16]


def frozen_keys(family, model_cfg):
    """The key tuples of the Params the family does not train."""
    _, _, frozen, _ = family_lib.split(family_lib.abstract_model(family, model_cfg), family)
    return set(traverse_util.flatten_dict(family_lib.pure(frozen)))


def _name(key):
    return "/".join(map(str, key))


def check_arguments(method, n_models, has_base, coefficients):
    """MergeError for a method, base or coefficient count that cannot work (before any input is loaded)."""
    if method not in METHODS:
        raise MergeError(f"--method {method}: one of {', '.join(METHODS)}")
    if method in NEEDS_BASE and not has_base:
        raise MergeError(f"--method {method} merges task vectors (model − base): give --base")
    if not n_models:
        raise MergeError("no --models to merge")
    want = expected_coefficients(method, n_models, has_base)
    if coefficients is not None and len(coefficients) != want:
        raise MergeError(f"--coefficients: {len(coefficients)} given; --method {method} with {n_models} models"
                         f"{' and a base' if has_base else ''} takes {want}")


def check_input(name, w, ref_name, ref):
    """MergeError naming input `name` when it is not `ref`'s family, config or tensors, or holds NaN/Inf."""
    if w.family != ref.family:
        raise MergeError(f"{name}: a {w.family} model, {ref_name} a {ref.family} model: one family per merge")
    ref_cfg = traverse_util.flatten_dict(family_lib.config_to_dict(ref.config), sep=".")
    cfg = traverse_util.flatten_dict(family_lib.config_to_dict(w.config), sep=".")
    diff = sorted(k for k in set(cfg) | set(ref_cfg) if cfg.get(k) != ref_cfg.get(k))
    if diff:
        raise MergeError(f"{name}: its model config differs from {ref_name}'s ({', '.join(diff[:4])}): merged "
                         "models share one architecture")
    shapes = {k: np.shape(v) for k, v in traverse_util.flatten_dict(ref.params).items()}
    flat = traverse_util.flatten_dict(w.params)
    if set(flat) != set(shapes):
        raise MergeError(f"{name}: its tensors differ from {ref_name}'s "
                         f"({', '.join(map(_name, sorted(set(flat) ^ set(shapes), key=str)[:3]))})")
    for k, v in flat.items():
        if np.shape(v) != shapes[k]:
            raise MergeError(f"{name}: {_name(k)} has shape {np.shape(v)}, {shapes[k]} in {ref_name}")
        if np.issubdtype(v.dtype, np.floating) and not bool(_xp(v).isfinite(v).all()):
            raise MergeError(f"{name}: non-finite values (NaN/Inf) in {_name(k)}")


def expected_coefficients(method, n_models, has_base):
    """How many --coefficients a method takes: one per model, progressive one per pairwise step."""
    if method == "progressive":
        return n_models if has_base else n_models - 1
    return n_models


def ties_vector(task_vectors, density):
    """TIES merge of task vectors [n, ...] → [...]: trim each to its `density` largest magnitudes, elect the sign
    of their sum per element, average the trimmed values of that sign (the definition `merge` streams)."""
    trimmed = np.stack([trim(np.asarray(t, np.float32), density) for t in task_vectors])
    sign = np.sign(trimmed.sum(0))
    agree = (np.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    return np.where(count > 0, (trimmed * agree).sum(0) / np.maximum(count, 1), 0.0)


def merge_tensor(method, values, base, coefficients, scale, density):
    """One tensor by its definition: `values` [n, ...] of the models (float32), `base` [...] or None → the merged
    tensor (`merge` computes the same streaming over the inputs)."""
    n = len(values)
    c = coefficients if coefficients is not None else default_coefficients(method, n, base is not None)
    if method == "average":
        return np.tensordot(np.asarray(c, np.float32), values, axes=1)
    if method == "task_arithmetic":
        return base + scale * np.tensordot(np.asarray(c, np.float32), values - base, axes=1)
    if method == "ties":
        return base + scale * ties_vector(values - base, density)
    seq = ([base] if base is not None else []) + list(values)  # progressive: interpolations in order
    merged = seq[0]
    for coef, value in zip(c, seq[1:]):
        merged = (1.0 - coef) * merged + coef * value
    return merged


def merge(method, models, base=None, coefficients=None, scale=1.0, density=0.2, names=None):
    """Inputs → (merged params, {"merged": n tensors, "frozen": n tensors}). `models` (and `base`) are Weights or
    zero-argument loaders of Weights; loaders are called one at a time, so the host holds the reference (base or
    first model), the running result and one input (TIES loads each input twice: its sign election needs every
    trimmed task vector first). Each input is checked as it is loaded; the frozen Params of the reference are kept,
    and an input with other frozen values is a MergeError."""
    names = names or [f"model {i}" for i in range(len(models))]
    check_arguments(method, len(models), base is not None, coefficients)
    loaders = [m if callable(m) else (lambda m=m: m) for m in models]
    base = base() if callable(base) else base
    first = loaders[0]() if base is None else None
    ref, ref_name = (base, "base") if base is not None else (first, names[0])
    frozen = frozen_keys(ref.family, ref.config)
    flat_ref = traverse_util.flatten_dict(ref.params)
    merged_keys = [k for k, v in flat_ref.items() if k not in frozen and np.issubdtype(v.dtype, np.floating)]
    xp = _xp(*flat_ref.values())  # numpy on the host, jax.numpy for arrays sharded over a mesh
    f32 = {k: xp.asarray(flat_ref[k]).astype(np.float32) for k in merged_keys}  # the reference as float32

    def inputs():
        """(name, flat float32 merged tensors) of each model, loaded, checked and frozen-compared one at a time."""
        for i, (name, load) in enumerate(zip(names, loaders)):
            w = first if (i == 0 and first is not None) else load()
            check_input(name, w, ref_name, ref)
            flat = traverse_util.flatten_dict(w.params)
            for key in set(flat_ref) - set(merged_keys):
                if not bool(xp.array_equal(flat[key], flat_ref[key])):
                    raise MergeError(f"{name}: its frozen parameter {_name(key)} differs from the reference's "
                                     "(frozen parameters are not merged: the models to merge share them)")
            yield name, {k: xp.asarray(flat[k]).astype(np.float32) for k in merged_keys}

    n = len(models)
    if method == "ties":
        total = {k: xp.zeros_like(v) for k, v in f32.items()}
        for _, flat in inputs():  # pass 1: the elected sign needs the sum of every trimmed task vector
            for k in merged_keys:
                total[k] = total[k] + trim(flat[k] - f32[k], density)
        sums = {k: xp.zeros_like(v) for k, v in f32.items()}
        counts = {k: xp.zeros_like(v) for k, v in f32.items()}
        for _, flat in inputs():  # pass 2: the mean of the trimmed values that agree with it
            for k in merged_keys:
                t = trim(flat[k] - f32[k], density)
                agree = (xp.sign(t) == xp.sign(total[k])) & (t != 0)
                sums[k] = sums[k] + xp.where(agree, t, 0.0)
                counts[k] = counts[k] + agree
        result = {k: f32[k] + np.float32(scale) * xp.where(counts[k] > 0, sums[k] / xp.maximum(counts[k], 1), 0.0)
                  for k in merged_keys}
    else:
        c = list(coefficients) if coefficients is not None else default_coefficients(method, n, base is not None)
        if method == "progressive":
            steps = iter(c)
            result = dict(f32) if base is not None else None
        else:
            result = {k: xp.zeros_like(v) for k, v in f32.items()}
        for i, (_, flat) in enumerate(inputs()):
            if method == "average":
                for k in merged_keys:
                    result[k] = result[k] + np.float32(c[i]) * flat[k]
            elif method == "task_arithmetic":
                for k in merged_keys:
                    result[k] = result[k] + np.float32(c[i]) * (flat[k] - f32[k])
            elif result is None:  # progressive without a base: it starts at the first model
                result = flat
            else:
                coef = np.float32(next(steps))
                result = {k: (1 - coef) * result[k] + coef * flat[k] for k in merged_keys}
        if method == "task_arithmetic":
            result = {k: f32[k] + np.float32(scale) * result[k] for k in merged_keys}
    out = {k: result[k].astype(flat_ref[k].dtype) if k in result else flat_ref[k] for k in flat_ref}
    return traverse_util.unflatten_dict(out), {"merged": len(merged_keys), "frozen": len(flat_ref) - len(merged_keys)}


def default_coefficients(method, n_models, has_base):
    """average 1/n each; task_arithmetic 1 each; progressive 1/(k+1) at its k-th step (the running mean)."""
    if method == "average":
        return [1.0 / n_models] * n_models
    if method == "task_arithmetic":
        return [1.0] * n_models
    # step k (1, 2, …) brings in the (k+1)-th element of the sequence (base or first model, then the models)
    return [1.0 / (k + 1) for k in range(1, 1 + expected_coefficients(method, n_models, has_base))]


def _xp(*arrays):
    """numpy, or jax.numpy when any array is a jax Array (sharded inputs: the arithmetic stays on the devices)."""
    import jax

    if any(isinstance(a, jax.Array) for a in arrays):
        import jax.numpy as jnp

        return jnp
    return np


def trim(task_vector, density):
    """TIES's trim: the task vector with all but its `density` largest magnitudes zeroed (per tensor). On a jax
    Array: all values at least the k-th largest magnitude kept (ties at the threshold may keep a few more)."""
    if _xp(task_vector) is not np:
        import jax.numpy as jnp

        k = int(np.ceil(density * task_vector.size))
        if k == 0:
            return jnp.zeros_like(task_vector)
        threshold = jnp.sort(jnp.abs(task_vector).reshape(-1))[-k]
        # the sort gathers the shards: wait for it, so that no more than one collective is in flight (XLA:CPU's
        # simulated devices abort when many eager collectives starve each other's threads past 40 s)
        return jnp.where(jnp.abs(task_vector) >= threshold.block_until_ready(), task_vector, 0.0)
    flat = task_vector.reshape(-1)
    k = int(np.ceil(density * flat.size))
    out = np.zeros_like(flat)
    if k > 0:
        keep = np.argpartition(-np.abs(flat), k - 1)[:k]
        out[keep] = flat[keep]
    return out.reshape(task_vector.shape)


def load_sharded(path, mesh, rules=None, report=print):
    """A weights directory or a pretraining workdir (its newest checkpoint that verifies) → Weights whose params are
    jax Arrays sharded over `mesh` as in training (`rules`: logical-axis rules, default the library's), restored
    straight into their shards: no host holds a whole model."""
    import jax
    import orbax.checkpoint as ocp

    from geolink_jax.convert import params_store
    from geolink_jax.nn.partitioning import DEFAULT_RULES
    from geolink_jax.train import checkpoint, sharding

    path = pathlib.Path(path).absolute()
    try:
        kind, record = params_store.weights_source(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}; files are merged on the host (no --mesh)") from None
    name, cfg = params_store.config_from_record(record)
    fam = family_lib.get_family(name)
    _, trained, frozen, _ = family_lib.split(family_lib.abstract_model(fam, cfg), fam)
    rules = rules or DEFAULT_RULES

    def target(state):
        shardings = sharding.param_shardings(state, mesh, rules)
        return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), family_lib.pure(state),
                            shardings)

    parts = {"params": target(trained), **({"frozen": target(frozen)} if jax.tree.leaves(frozen) else {})}
    if kind == "weights":
        with ocp.StandardCheckpointer() as ckptr:
            return params_store.Weights(name, ckptr.restore(path / "params", target=params_store.merge_trees(
                parts["params"], parts.get("frozen", {}))), cfg)
    try:  # the newest checkpoint that verifies (damaged ones are reported and skipped)
        _, out = checkpoint.load_verified(path / "checkpoints", report=report, target=parts)
    except checkpoint.CheckpointError as e:
        raise FileNotFoundError(str(e)) from None
    return params_store.Weights(name, params_store.merge_trees(out["params"], out.get("frozen", {})), cfg)
