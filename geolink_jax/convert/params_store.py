"""Weights on disk, for any model family: an orbax checkpoint of the params plus the family and model config,
written by `geolink-jax convert import`; a pretraining workdir (its latest checkpoint + config.json) reads the same.

    DIR/params/             orbax (committed atomically)
    DIR/model_config.json   {"family": name, "model": {every model field}}
"""

import json
import pathlib
import sys
import typing

import jax
import numpy as np
import orbax.checkpoint as ocp

from geolink_jax import family as family_lib

CONFIG_FILE = "model_config.json"


class Weights(typing.NamedTuple):
    family: str
    params: dict  # every nnx.Param (trained and frozen) as nested numpy dicts
    config: object  # the family's model config dataclass


def config_record(model_cfg):
    """{"family", "model"}: what model_config.json and exported files' metadata hold."""
    return dict(family=family_lib.family_of(model_cfg), model=family_lib.config_to_dict(model_cfg))


# Files written before the family interface hold GeoLink models (a bare model dict, or a "geolink" metadata key).
LEGACY_FAMILY = "geolink"


def recorded_config(meta):
    """An exported file's metadata → its config record {"family", "model"}, or None when it records none."""
    if meta and LEGACY_FAMILY in meta and "family" not in meta:
        meta = dict(family=LEGACY_FAMILY, model=meta[LEGACY_FAMILY])
    return meta if (meta or {}).get("family") and meta.get("model") is not None else None


def config_from_record(record):
    """config_record(...) → (family name, model config). A bare model dict (older files) is LEGACY_FAMILY's."""
    if "family" in record and "model" in record:
        name, model = record["family"], record["model"]
    else:
        name, model = LEGACY_FAMILY, record
    fam = family_lib.get_family(name)
    return name, family_lib.config_from_dict(fam.config_cls, model)


def check_params(params, family, model_cfg, source, allow_nonfinite=False):
    """Raise ValueError naming the tensors whose shapes differ from the model config's (both shapes), that are
    missing or extra, or (unless allow_nonfinite) that hold NaN/Inf."""
    from flax import traverse_util

    want = {"/".join(map(str, k)): tuple(v.shape) for k, v in
            traverse_util.flatten_dict(family_lib.abstract_params(family, model_cfg)).items()}
    have = {"/".join(map(str, k)): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    problems = [f"{k}: {tuple(have[k].shape)} here, {want[k]} for the model config" for k in sorted(want)
                if k in have and tuple(have[k].shape) != want[k]]
    problems += [f"{k}: missing" for k in sorted(set(want) - set(have))]
    problems += [f"{k}: not a parameter of the model config" for k in sorted(set(have) - set(want))]
    if problems:
        raise ValueError(f"{source}: tensors disagree with the recorded {family} model config: "
                         + "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    if not allow_nonfinite:
        check_finite(have, source)


def check_finite(tensors, source):
    """Raise ValueError naming the tensors (name → array) that hold NaN or Inf."""
    bad = [k for k, v in tensors.items() if np.issubdtype(np.asarray(v).dtype, np.floating)
           and not np.isfinite(np.asarray(v)).all()]
    if bad:
        raise ValueError(f"{source}: non-finite values (NaN/Inf) in {', '.join(bad[:5])}"
                         + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else "") + "; pass --allow-nonfinite to "
                         "convert them anyway")


def save_params(directory, params, model_cfg):
    """params: nested dict of arrays → DIR/params + DIR/model_config.json."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        # arrays sharded over a mesh are written from their shards (no host copy of the whole model)
        ckptr.save(directory / "params", jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x),
                                                       params), force=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config_record(model_cfg), indent=1))
    return directory


def _int_keys(tree):
    """orbax stores nnx list indices as strings: '0' → 0, as nnx.to_pure_dict has them."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


def merge_trees(a, b):
    """Two nested dicts with disjoint leaves (trained and frozen params) → one."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def weights_source(path):
    """A weights directory (model_config.json) or a pretraining workdir (checkpoints/ + config.json) → ("weights" |
    "workdir", its config record {"family", "model"}); anything else: FileNotFoundError saying what it is not."""
    path = pathlib.Path(path)
    if (path / CONFIG_FILE).exists():
        return "weights", json.loads((path / CONFIG_FILE).read_text())
    if (path / "checkpoints").is_dir() and (path / "config.json").exists():
        run = json.loads((path / "config.json").read_text())
        return "workdir", dict(family=run.get("family", LEGACY_FAMILY), model=run["model"])
    raise FileNotFoundError(f"{path}: neither a weights directory ({CONFIG_FILE}) nor a pretraining workdir "
                            "(checkpoints/ + config.json)")


def load_params(path, step=None):
    """A converted directory (params/ + model_config.json) or a pretraining workdir (latest checkpoint +
    config.json; `step`: that checkpoint) → Weights(family, params, model config)."""
    path = pathlib.Path(path).absolute()
    kind, record = weights_source(path)
    if kind == "weights":
        from geolink_jax.train.checkpoint import restore_on_host

        with ocp.StandardCheckpointer() as ckptr:
            params = restore_on_host(ckptr, path / "params")  # written on any devices (a merge on a mesh)
        name, cfg = config_from_record(record)
        return Weights(name, _int_keys(params), cfg)
    from geolink_jax.train.checkpoint import CheckpointError, load_verified

    try:  # the newest checkpoint that verifies (damaged ones are reported and skipped)
        _, state = load_verified(path / "checkpoints", report=lambda line: print(line, file=sys.stderr), step=step)
    except CheckpointError as e:
        raise FileNotFoundError(str(e)) from None
    params = _int_keys(merge_trees(state["params"], state.get("frozen") or {}))
    if record["family"] == LEGACY_FAMILY and "osm_in_features" not in record["model"]:  # workdirs of before the
        record["model"]["osm_in_features"] = int(np.shape(params["osm_node_pred"]["kernel"])[-1])  # family interface
    name, cfg = config_from_record(record)
    return Weights(name, params, cfg)


def model_from_params(family, params, model_cfg):
    """(family, params, config) → the family's module holding those weights (built abstractly: no random init)."""
    from flax import nnx

    abstract = family_lib.abstract_model(family, model_cfg)
    graphdef, state, rest = nnx.split(abstract, nnx.Param, ...)
    nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, params))
    return nnx.merge(graphdef, state, rest)


def load_model(path, step=None):
    """A converted directory or a pretraining workdir (`step`: that checkpoint, else the newest) → (family name,
    module)."""
    weights = load_params(path, step)
    return weights.family, model_from_params(*weights)
