"""Declaring sweeps over ml_collections configs, in the style of big_vision / xmanager hyper sweeps.

A sweep is a list of runs; a run is a dict of dotted-key overrides ({"step.batch": 8, "suite": "step"}).
`product` crosses sweeps, `zipped` pairs them, `sweep(key, values)` is one axis, `fixed(**kv)` one run.
`resolve(base, run)` gives the run's config: base's defaults for the run's suite, with its overrides applied by
ml_collections (unknown keys are an error, so a typo in a sweep fails before anything is measured).
"""

import itertools

import ml_collections


def sweep(key, values):
    return [{key: v} for v in values]


def fixed(**overrides):
    return [{k.replace("__", "."): v for k, v in overrides.items()}]


def product(*sweeps):
    return [dict(kv for run in combo for kv in run.items()) for combo in itertools.product(*sweeps)]


def zipped(*sweeps):
    if len({len(s) for s in sweeps}) > 1:
        raise ValueError("zipped sweeps must have equal lengths")
    return [dict(kv for run in combo for kv in run.items()) for combo in zip(*sweeps)]


def chain(*sweeps):
    return [run for s in sweeps for run in s]


def resolve(base, run):
    """base: ConfigDict with one sub-config per suite (base.step, base.mask, …); run: {"suite": s, "s.key": v, …}
    or {"suite": s, "key": v}. Returns the run's ConfigDict (suite field set)."""
    run = dict(run)
    suite = run.pop("suite")
    if suite not in base:
        raise KeyError(f"sweep names suite {suite!r}; the base config has {sorted(base.keys())}")
    cfg = ml_collections.ConfigDict(base[suite].to_dict())
    flat = {(k[len(suite) + 1:] if k.startswith(suite + ".") else k): v for k, v in run.items()}
    for key in flat:
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        if key.split(".")[-1] not in node:
            raise KeyError(f"sweep override {key!r} is not a field of the {suite} config")
    cfg.update_from_flattened_dict(flat)
    cfg.suite = suite
    return cfg
