"""Run configs (ml_collections): the fields every pretraining run has, the model block derived from the family's
config dataclass, named configs, command-line overrides, and the values derived from the final config.

    config = load(["--config=demo", "--config.model.vit.depth=4"])   # a named config or a file, plus overrides
    derived = derive(config, num_examples)                          # total steps, peak lr, warmup steps

Every default lives in exactly one place: run fields here, model fields in the family's dataclass. Named configs
change only what differs and never compute derived values: `epochs` and `optim.lr_base_batch` are turned into steps
and a learning rate by `derive`, from the config as finally overridden.
"""

import dataclasses
import math
import pathlib
import typing

import ml_collections
from ml_collections import config_dict

from geolink_jax import family as family_lib
from geolink_jax.nn.partitioning import DEFAULT_RULES


def model_block(model_cfg):
    """A model config dataclass → ConfigDict with every field (nested dataclasses as nested blocks). A field whose
    default is None becomes a typed placeholder, so `--config.model.X=value` parses with the field's type."""
    block = ml_collections.ConfigDict()
    hints = typing.get_type_hints(type(model_cfg))
    for f in dataclasses.fields(model_cfg):
        value = getattr(model_cfg, f.name)
        if dataclasses.is_dataclass(value):
            block[f.name] = model_block(value)
        elif value is None:
            types = [t for t in typing.get_args(hints[f.name]) if t is not type(None)]
            block[f.name] = config_dict.placeholder(types[0] if types else object)
        else:
            block[f.name] = value
    return block


def base_config(family):
    """Every run field with its default, and the family's model block."""
    fam = family_lib.get_family(family)
    c = ml_collections.ConfigDict()
    c.family = fam.name
    c.seed = 0
    c.batch_size = 256  # global
    c.total_steps = 100_000  # used when epochs is 0
    c.epochs = 0.0  # > 0: total_steps = ceil(epochs · examples / batch_size) (examples: data.num_examples or the
    #                 manifest's record count)
    c.log_every = 50
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.keep_period = 0  # also keep every N-th step forever (0: off)
    c.async_checkpoints = True
    c.on_nonfinite = "skip"  # skip the update, or "stop" (raise at the next log line)
    c.nonfinite_max_fraction = 0.05  # a run that skipped more of its steps as non-finite ends with exit 1
    c.faithful_batch_groups = True  # per-device batch statistics and contrastive negatives, as the reference
    c.tensorboard = True
    c.pictures = True  # end-of-run pictures in the workdir (single-host runs)
    c.distributed = False  # jax.distributed.initialize() (also when JAX_COORDINATOR_ADDRESS is set or the
    #                        process block below is given)
    # explicit jax.distributed settings, e.g. processes on one machine; on TPU pods, SLURM or Kubernetes leave them
    # unset: jax detects them from the cluster environment
    c.process = ml_collections.ConfigDict(dict(coordinator="", count=0, index=-1))

    c.data = ml_collections.ConfigDict(dict(
        path="", encoder="e5", budget_stat="max", worker_count=0, read_threads=2, faithful_crop=False,
        draft_decode=False, num_examples=0,
        augment_on_device=False,  # crop/resize/flip/jitter/normalise in the train step (data/device_augment.py)
        canvas_size=0))  # its uint8 canvas side; 0: the manifest's largest image (data/pipeline.canvas_size)

    c.model = model_block(fam.config_cls())

    c.optim = ml_collections.ConfigDict(dict(
        lr=1.5e-4,  # the peak learning rate; with lr_base_batch > 0 the rate at that batch, scaled linearly
        lr_base_batch=0, end_lr_factor=0.0, warmup_steps=2000,
        warmup_fraction=0.0,  # > 0: warmup_steps = fraction · total steps
        weight_decay=0.05, b1=0.9, b2=0.95, eps=1e-8,  # AdamW's constants (optax's eps default)
        clip_norm=1.0,  # global-norm clipping (0: none, as GAIR's and DOFA-CLIP's runs)
        accumulate=1))  # micro-batches per optimizer update (optax.MultiSteps); steps still count micro-batches

    # the run a named config reproduces (`geolink-jax pretrain --dry-run` prints it beside ours): its name, source
    # (repository, commit, file and line), its values by recipe-card field (train/recipe.py) and, by field, why ours
    # differs where it does
    c.reference = ml_collections.ConfigDict(dict(name="", source="", values={}, deviations={}))

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding_rules = [list(r) for r in DEFAULT_RULES]
    return c


def model_dtype(config):
    """The model's compute dtype: the model block's `dtype`, or its first tower's (DOFA-CLIP's image/text)."""
    if "dtype" in config.model:
        return config.model.dtype
    for v in config.model.values():
        if hasattr(v, "keys") and "dtype" in v:
            return v.dtype
    return "float32"


def transfer(config, recipe):
    """`config` (one family's) with everything of `recipe` (another's) that applies to it: every run field, and
    the model fields both families have (e.g. the MAE baseline with GeoLink's image branch and recipe)."""
    for key in recipe:
        if key == "model":
            config.model.update({k: recipe.model[k] for k in config.model if k in recipe.model})
        elif key != "family":
            config[key] = recipe[key]
    return config


@dataclasses.dataclass(frozen=True)
class Derived:
    """Values computed from the final config (and the data size): what the trainer and optimizer use.

    Steps (total, warmup) count train steps, i.e. micro-batches of `batch_size` records; the optimizer makes one
    update every `optim.accumulate` of them. `effective_batch` is the batch of one update in the family's unit
    (`Family.sample_unit`: images, photos, pairs), the unit `optim.lr_base_batch` counts."""

    total_steps: int
    lr: float
    warmup_steps: int
    effective_batch: int = 0
    unit: str = "images"

    def as_dict(self):
        return dataclasses.asdict(self)


def derive(config, num_examples=None):
    """Total steps (from epochs over records when set), the peak learning rate and the warmup length, from the final
    config. With `optim.lr_base_batch` > 0 the rate is `optim.lr` × effective batch / lr_base_batch, the effective
    batch counted in the family's unit: batch_size records × accumulate × samples per record (GAIR: a patch holds
    sv_budget photos, and a photo is the sample of their lr rule)."""
    total = int(config.total_steps)
    if config.get("epochs", 0):
        examples = config.data.get("num_examples", 0) or num_examples
        if not examples:
            raise ValueError("config.epochs is set but the number of examples is unknown (set data.num_examples)")
        total = math.ceil(config.epochs * examples / config.batch_size)
    o = config.optim
    lr, effective, unit = learning_rate(config)
    warmup = int(total * o.warmup_fraction) if o.get("warmup_fraction", 0) else int(o.warmup_steps)
    return Derived(total_steps=total, lr=lr, warmup_steps=warmup, effective_batch=effective, unit=unit)


def learning_rate(config):
    """(peak lr, effective batch of one update, its unit): see `derive`."""
    o = config.optim
    unit, per_record = family_lib.get_family(config.family).sample_unit(family_lib.model_config(config.family,
                                                                                                  config))
    effective = config.batch_size * max(int(o.get("accumulate", 1)), 1) * per_record
    lr = o.lr * effective / o.lr_base_batch if o.get("lr_base_batch", 0) else o.lr
    return float(lr), int(effective), unit


# ------------------------------------------------------------------ named configs and overrides
class ConfigError(ValueError):
    """A config that cannot run: unknown family or field, bad override. The message says which and what is valid."""


def named_configs():
    """{name: module path} of every family's named configs."""
    out = {}
    for name in family_lib.FAMILIES:
        out.update(family_lib.get_family(name).configs)
    return out


def config_path(spec):
    """A config file path (optionally FILE:arg) or a named config → the file to load (with :arg kept)."""
    file, sep, arg = spec.partition(":")
    if pathlib.Path(file).suffix == ".py":
        if not pathlib.Path(file).is_file():
            raise ConfigError(f"config file {file} does not exist")
        return spec
    names = named_configs()
    if file not in names:
        raise ConfigError(f"no config file or named config {file!r}; named configs: {', '.join(sorted(names))}")
    import importlib.util

    return importlib.util.find_spec(names[file]).origin + sep + arg


def _fields(node, prefix):
    return [f"{prefix}.{k}" for k in node.keys()]


def _check_override(config, key):
    """--config.a.b.c=…: raise ConfigError naming the first missing part and listing the valid fields there."""
    node, path = config, "config"
    for part in key.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            valid = _fields(node, path) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
            raise ConfigError(f"--{path}.{part}: no such field" + (f"; valid: {', '.join(valid)}" if valid else
                                                                   f" ({path} is a {type(node).__name__})"))
        node, path = node[part], f"{path}.{part}"


def load_file(spec):
    """A config file (FILE or FILE:arg) or a named config → its ConfigDict (get_config(arg) of the file)."""
    import importlib.util

    file, _, arg = config_path(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"geolink_config_{pathlib.Path(file).stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(arg) if arg else module.get_config()
    except ValueError as e:  # a config refusing its argument (gair_vit_b:bogus) is the user's mistake: one line
        raise ConfigError(str(e)) from None


def load(argv, base=None):
    """['--config=SPEC', '--config.a.b=v', …] → the locked, checked ConfigDict. SPEC is a config file or a named
    config; with `base` (a ConfigDict, e.g. a benchmark sweep) only the overrides are read. Every override must
    name an existing field (ConfigError naming it and listing the valid ones); a run config must name a known
    family and a model block that builds the family's model config."""
    from absl import flags
    from ml_collections import config_flags

    overrides = [a for a in argv if a.startswith("--config.")]
    other = [a for a in argv if not a.startswith("--config.") and not a.startswith("--config=")]
    if other:
        raise ConfigError(f"unexpected arguments: {' '.join(other)} (overrides look like --config.a.b=value)")
    if base is None:
        spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if spec is None:
            raise ConfigError("--config is required (a config file or a named config)")
        base = load_file(spec)
    for a in overrides:
        _check_override(base, a[len("--config."):].split("=", 1)[0])
    values = flags.FlagValues()
    argv = ["geolink-jax", *overrides]
    # sys_argv: the flags to define overrides for (by default DEFINE_config_dict would read the process's sys.argv)
    config_flags.DEFINE_config_dict("config", base, "config", flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:
        raise ConfigError(str(e)) from None
    config = values.config
    if "family" in config:
        check(config)
    return config


def check(config):
    """Fail early: the family exists and the model block is a valid model config for it."""
    try:
        fam = family_lib.get_family(config.family)
        family_lib.model_config(fam, config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
