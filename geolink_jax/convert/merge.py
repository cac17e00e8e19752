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
location queue, batch statistics) is not part of weights and is not carried. Arithmetic is float32 on the host, one
tensor at a time; the result is cast back to each tensor's dtype.
"""

import hashlib

import numpy as np
from flax import traverse_util

from geolink_jax import family as family_lib

METHODS = ("average", "task_arithmetic", "ties", "progressive")
NEEDS_BASE = ("task_arithmetic", "ties")


class MergeError(ValueError):
    """Inputs that cannot be merged (one line; nothing is written)."""


def fingerprint(params):
    """A short SHA-256 of a param tree's names, shapes, dtypes and bytes (provenance of each input)."""
    h = hashlib.sha256()
    for key, value in sorted(traverse_util.flatten_dict(params).items(), key=lambda kv: str(kv[0])):
        value = np.ascontiguousarray(value)
        h.update(f"{_name(key)}:{value.shape}:{value.dtype}".encode())
        h.update(value.tobytes())
    return h.hexdigest()[:16]


def frozen_keys(family, model_cfg):
    """The key tuples of the Params the family does not train."""
    _, _, frozen, _ = family_lib.split(family_lib.abstract_model(family, model_cfg), family)
    return set(traverse_util.flatten_dict(family_lib.pure(frozen)))


def _name(key):
    return "/".join(map(str, key))


def check_inputs(method, models, base, coefficients, names):
    """MergeError naming the input and the problem: method, counts, families, configs, tensor shapes, NaN/Inf."""
    if method not in METHODS:
        raise MergeError(f"--method {method}: one of {', '.join(METHODS)}")
    if method in NEEDS_BASE and base is None:
        raise MergeError(f"--method {method} merges task vectors (model − base): give --base")
    if not models:
        raise MergeError("no --models to merge")
    want = expected_coefficients(method, len(models), base is not None)
    if coefficients is not None and len(coefficients) != want:
        raise MergeError(f"--coefficients: {len(coefficients)} given; --method {method} with {len(models)} models"
                         f"{' and a base' if base is not None else ''} takes {want}")
    inputs = ([("base", base)] if base is not None else []) + list(zip(names, models))
    ref_name, ref = inputs[0]
    ref_cfg = traverse_util.flatten_dict(family_lib.config_to_dict(ref.config), sep=".")
    shapes = {k: np.shape(v) for k, v in traverse_util.flatten_dict(ref.params).items()}
    for name, w in inputs:
        if w.family != ref.family:
            raise MergeError(f"{name}: a {w.family} model, {ref_name} a {ref.family} model: one family per merge")
        cfg = traverse_util.flatten_dict(family_lib.config_to_dict(w.config), sep=".")
        diff = sorted(k for k in set(cfg) | set(ref_cfg) if cfg.get(k) != ref_cfg.get(k))
        if diff:
            raise MergeError(f"{name}: its model config differs from {ref_name}'s ({', '.join(diff[:4])}): "
                             "merged models share one architecture")
        flat = traverse_util.flatten_dict(w.params)
        if set(flat) != set(shapes):
            raise MergeError(f"{name}: its tensors differ from {ref_name}'s "
                             f"({', '.join(map(_name, sorted(set(flat) ^ set(shapes), key=str)[:3]))})")
        for k, v in flat.items():
            if np.shape(v) != shapes[k]:
                raise MergeError(f"{name}: {_name(k)} has shape {np.shape(v)}, {shapes[k]} in {ref_name}")
            if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all():
                raise MergeError(f"{name}: non-finite values (NaN/Inf) in {_name(k)}")


def expected_coefficients(method, n_models, has_base):
    """How many --coefficients a method takes: one per model, progressive one per pairwise step."""
    if method == "progressive":
        return n_models if has_base else n_models - 1
    return n_models


def ties_vector(task_vectors, density):
    """TIES merge of task vectors [n, ...] → [...]: trim each to its `density` largest magnitudes, elect the sign
    of their sum per element, average the trimmed values of that sign."""
    tv = np.asarray(task_vectors, np.float32)
    flat = tv.reshape(len(tv), -1)
    k = int(np.ceil(density * flat.shape[1]))
    trimmed = np.zeros_like(flat)
    if k > 0:
        for i, row in enumerate(flat):
            keep = np.argpartition(-np.abs(row), k - 1)[:k]
            trimmed[i, keep] = row[keep]
    sign = np.sign(trimmed.sum(0))
    agree = (np.sign(trimmed) == sign) & (trimmed != 0)
    count = agree.sum(0)
    merged = np.where(count > 0, (trimmed * agree).sum(0) / np.maximum(count, 1), 0.0)
    return merged.reshape(tv.shape[1:])


def merge_tensor(method, values, base, coefficients, scale, density):
    """One tensor: `values` [n, ...] of the models (float32), `base` [...] or None → the merged tensor."""
    n = len(values)
    if method == "average":
        c = coefficients if coefficients is not None else [1.0 / n] * n
        return np.tensordot(np.asarray(c, np.float32), values, axes=1)
    if method == "task_arithmetic":
        c = coefficients if coefficients is not None else [1.0] * n
        return base + scale * np.tensordot(np.asarray(c, np.float32), values - base, axes=1)
    if method == "ties":
        return base + scale * ties_vector(values - base, density)
    # progressive: interpolate in sequence from the base (or the first model)
    seq = ([base] if base is not None else []) + list(values)
    c = coefficients if coefficients is not None else [1.0 / (k + 1) for k in range(1, len(seq))]
    merged = seq[0]
    for coef, value in zip(c, seq[1:]):
        merged = (1.0 - coef) * merged + coef * value
    return merged


def merge(method, models, base=None, coefficients=None, scale=1.0, density=0.2, names=None):
    """Weights → (merged params, {"merged": n tensors, "frozen": n tensors}) after `check_inputs`; the frozen
    Params of the reference (base or first model) are kept, and an input with other frozen values is a
    MergeError."""
    names = names or [f"model {i}" for i in range(len(models))]
    check_inputs(method, models, base, coefficients, names)
    ref = base if base is not None else models[0]
    frozen = frozen_keys(ref.family, ref.config)
    flat_models = [traverse_util.flatten_dict(w.params) for w in models]
    flat_base = traverse_util.flatten_dict(base.params) if base is not None else None
    out, counts = {}, {"merged": 0, "frozen": 0}
    for key, ref_value in traverse_util.flatten_dict(ref.params).items():
        ref_value = np.asarray(ref_value)
        if key in frozen or not np.issubdtype(ref_value.dtype, np.floating):
            for name, flat in zip(names, flat_models):
                if not np.array_equal(np.asarray(flat[key]), ref_value):
                    raise MergeError(f"{name}: its frozen parameter {_name(key)} differs from the reference's "
                                     "(frozen parameters are not merged: the models to merge share them)")
            out[key] = ref_value
            counts["frozen"] += 1
            continue
        values = np.stack([np.asarray(flat[key], np.float32) for flat in flat_models])
        b = np.asarray(flat_base[key], np.float32) if flat_base is not None else None
        out[key] = np.asarray(merge_tensor(method, values, b, coefficients, scale, density), ref_value.dtype)
        counts["merged"] += 1
    return traverse_util.unflatten_dict(out), counts
