"""geolink_jax weights on disk: an orbax checkpoint of the params plus the model config, written by
`geolink-jax convert import`; a pretraining workdir (its latest checkpoint) is read the same way."""

import dataclasses
import json
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from geolink_jax.models import GeoLinkConfig

CONFIG_FILE = "model_config.json"


def config_to_dict(cfg: GeoLinkConfig):
    d = dataclasses.asdict(cfg)
    d["loss_weights"] = list(cfg.loss_weights)
    return d


def save_params(directory, params, cfg: GeoLinkConfig):
    """params: nested dict of arrays → DIR/params (orbax, committed atomically) + DIR/model_config.json."""
    directory = pathlib.Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(directory / "params", jax.tree.map(np.asarray, params), force=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_dict(cfg), indent=1))
    return directory


def _int_keys(tree):
    """orbax stores nnx list indices as strings: '0' → 0, as nnx.to_pure_dict has them."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v) for k, v in tree.items()}
    return tree


def load_params(path):
    """A converted directory (params/ + model_config.json) or a pretraining workdir (latest checkpoint +
    config.json) → (params as nested numpy dicts, GeoLinkConfig)."""
    path = pathlib.Path(path).absolute()
    if (path / CONFIG_FILE).exists():
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(path / "params")
        return _int_keys(params), GeoLinkConfig.from_dict(json.loads((path / CONFIG_FILE).read_text()))
    steps = sorted(int(p.name) for p in (path / "checkpoints").glob("*") if p.name.isdigit()) if (
        path / "checkpoints").exists() else []
    if not steps or not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: neither a converted weights directory ({CONFIG_FILE}) nor a pretraining "
                                "workdir (checkpoints/ + config.json)")
    with ocp.StandardCheckpointer() as ckptr:
        state = ckptr.restore(path / "checkpoints" / str(steps[-1]) / "state")
    params = _int_keys(state["params"])
    model = json.loads((path / "config.json").read_text())["model"]
    model["osm_in_features"] = int(np.shape(params["osm_node_pred"]["kernel"])[-1])
    return params, GeoLinkConfig.from_dict(model)


def model_from_params(params, cfg: GeoLinkConfig):
    """(params, config) → a GeoLink module holding those weights (built abstractly first: no random init)."""
    from flax import nnx

    from geolink_jax.models import GeoLink

    abstract = nnx.eval_shape(lambda: GeoLink(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, params))
    return nnx.merge(graphdef, state)


def load_model(path):
    """A converted directory or a pretraining workdir → GeoLink module."""
    return model_from_params(*load_params(path))
