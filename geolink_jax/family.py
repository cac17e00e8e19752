"""A model family: the one contract between a model and the shared trainer, checkpointer, converter, embedder,
planner and benchmarks.

The config names the family (`config.family`); `FAMILIES` maps the name to a `Family`, a record of plain
functions. Each family lives in a folder of its own (`geolink_jax/<family>/`) and nothing outside that folder
knows about it but the dict below.

Model state. A family's module is a Flax NNX module. The trainer splits it three ways:
- `params`: `nnx.Param`s that match `family.trainable` (default: every Param): gradients and optimizer state;
- `frozen`: the other Params (teachers, locked towers, fixed random features): no gradient, no optimizer state,
  but sharded by their logical axes and checkpointed;
- `state`: every non-Param variable (`nnx.BatchStat`, a queue, a counter, …): updated *inside* the step — the
  loss may assign to it, the trainer carries the new value out of the step — and checkpointed.

The loss is `loss(model, batch, key, ctx) -> (scalar, metrics dict)`; `ctx` is a `StepContext` carrying the mesh
(losses that communicate across the data axis use it with `jax.shard_map`), the number of per-device batch groups
and the train flag. Batches are pytrees of arrays with a leading batch axis; they may hold several inputs of
different kinds (images, graphs, photos, coordinates, tokens).
"""

import dataclasses
import importlib
from collections.abc import Callable

import jax
from flax import nnx

from geolink_jax.nn.config_dict import config_from_dict, config_to_dict  # noqa: F401  (part of the contract)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a loss may need to know about the step it runs in."""

    mesh: object = None  # jax.sharding.Mesh of the step (None outside a mesh)
    batch_groups: int = 1  # equal batch slices with their own batch statistics / negatives (per-device batches)
    train: bool = True
    batch_axes: tuple = ("data", "fsdp")  # mesh axes the batch is split over


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family provides. Every function takes the family's model config dataclass (`model_cfg`) and,
    where data matter, the run config (ml_collections) and the dataset manifest (a dict; None: the defaults).

    name: the `config.family` value.
    config_cls: frozen dataclass of every model hyperparameter (nested dataclasses allowed); its defaults are the
        only defaults — the config's `model` block is derived from it.
    build(model_cfg, rngs[, weights]) -> nnx.Module; `weights` (only when the family has `initial_weights`): what
        that returned, as arrays inside the jitted initialisation.
    loss(model, batch, key, ctx) -> (loss, metrics).
    dataset(paths, manifest, config, model_cfg, process_index, process_count) -> grain IterDataset of host batches
        (dicts of numpy arrays; an optional "stats" entry holds per-sample counters that never enter the step).
    default_data(config, workdir) -> directory of shards + manifest.json, made from bundled data when the config
        names none.
    model_fields_from_data(manifest) -> {model field: value} the data decide (e.g. the tag-feature width).
    abstract_batch(model_cfg, batch_size, manifest, data=None) -> pytree of jax.ShapeDtypeStruct (compile-ahead,
        planning); `data` (the config's data block) decides the input layout (e.g. on-device augmentation).
    example_batch(model_cfg, batch_size) -> host batch of real bundled data (benchmarks, tests).
    flops_per_sample(model_cfg, manifest) -> analytic matmul FLOPs of one train step per sample.
    flops_shared(model_cfg) -> analytic FLOPs of one train step that the whole batch shares (GAIR's location queue);
        `step_flops` adds them.
    configs: {name: "module.path"} of named run configs (files with get_config()).
    converters: {format: Converter} weight formats this family reads and writes.
    embed(model, tiles, batch_size, progress) -> (rows, maps): per-tile embeddings (see downstream/embed.py).
    write_embeddings(model, args) -> summary line: `geolink-jax embed` for this family's models (args: the command's
        parsed arguments, `embed_arguments` included).
    embed_arguments(parser): the family's own `embed` flags (e.g. GAIR's --queries).
    features(model, wavelengths_um, modality="image") -> FeatureFn (downstream/features.py): what downstream
        tasks read (`geolink-jax evaluate`): f(inputs) -> {"pooled": [B, D], "grid": [B, h, w, D], "levels",
        "embedding", …} as numpy, and f.apply(model, inputs), traceable (fine-tuning). modality "image": float32
        [B, H, W, C] in [0, 1] whose bands are at `wavelengths_um`; also "image+osm", "photo", "location", "text"
        where the family has that encoder. A band set or modality the model cannot take is a ValueError naming it,
        raised before any batch.
    preprocess: Command of `geolink-jax preprocess --family NAME` (its flags and job), or None.
    commands: further `geolink-jax` subcommands of the family (GeoLink's finetune, DOFA-CLIP's zeroshot, …).
    varied_batches(model_cfg, batch_size, count) -> VariedBatches: host batches whose contents vary the way the
        family's data do (the compile bench counts compilations over them).
    trainable: nnx filter of the trained Params (the others are frozen).
    pictures(model, host_batch, workdir) -> None: end-of-run pictures (optional).
    log_keys: metrics shown on the progress bar.
    num_examples(manifest, config) -> int or None: the elements of one epoch of the data (default: the manifest's
        records; GAIR's per-photo sampling: its photos).
    initial_weights(model_cfg) -> pytree of host arrays or None: weights read from files the config names
        (pretrained encoders, teachers), read before the train state is initialised and handed to `build`.
    sample_unit(model_cfg) -> (unit, per_record): what one sample of the learning-rate rule and the recipe card is
        ("images", "photos", "pairs") and how many one record (a batch row) holds at most (GAIR: sv_budget photos a
        patch); a dataset that knows the real count puts it in the batch's stats under the unit's name.
    device_augment: whether the family's pipeline reads `data.augment_on_device` (augmentation in the step).
    recipe_notes(model_cfg, config) -> {field: text}: the family's lines of the recipe card (augmentation, sampling,
        teachers, …; train/recipe.py).
    constrain(params, model_cfg) -> params: a projection of the trained params after every optimizer update
        (DOFA-CLIP's logit-scale clamp, as open_clip's train loop).
    record_format: the record format (a data manifest's "format") that `dataset` reads; `data_problem` compares it.
    """

    name: str
    config_cls: type
    build: Callable
    loss: Callable
    dataset: Callable
    default_data: Callable
    abstract_batch: Callable
    example_batch: Callable
    flops_per_sample: Callable
    configs: dict
    converters: dict = dataclasses.field(default_factory=dict)
    embed: Callable | None = None
    write_embeddings: Callable | None = None
    embed_arguments: Callable | None = None
    features: Callable | None = None
    preprocess: "Command | None" = None
    commands: tuple = ()
    varied_batches: Callable | None = None
    model_fields_from_data: Callable = lambda manifest: {}
    flops_shared: Callable = lambda model_cfg: 0
    trainable: object = nnx.Param
    pictures: Callable | None = None
    log_keys: tuple = ("loss",)
    sample_unit: Callable = lambda model_cfg: ("images", 1)
    device_augment: bool = False
    num_examples: Callable = lambda manifest, config: manifest.get("num_records")
    initial_weights: Callable | None = None
    recipe_notes: Callable | None = None
    constrain: Callable | None = None
    record_format: str = "geolink_jax.tile"


@dataclasses.dataclass(frozen=True)
class Converter:
    """One weight format of a family: to_state_dict(params, model_cfg) -> {name: array};
    from_state_dict(state_dict, model_cfg_or_None, source, **options) -> (params, model_cfg, report); a None
    model config means "infer it from the tensors"; `options` are the values of the flags `arguments(parser)` adds
    to `geolink-jax convert` (by their dest). metadata(model_cfg) -> dict recorded in an exported file (e.g. the
    timm architecture)."""

    to_state_dict: Callable
    from_state_dict: Callable
    description: str = ""
    arguments: Callable | None = None
    metadata: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Command:
    """A `geolink-jax` subcommand that a family provides. arguments(parser) adds its flags; run(args, overrides) ->
    exit code; `user_errors` are exception types reported as one `error:` line with exit 1 (user mistakes and
    unusable inputs); `overrides`: the command takes --config.a.b=value flags."""

    name: str
    help: str
    arguments: Callable
    run: Callable
    description: str = ""
    user_errors: tuple = ()
    overrides: bool = False


@dataclasses.dataclass(frozen=True)
class VariedBatches:
    """What the compile bench feeds a family's train step: `padded` host batches (the library's static shapes),
    optionally `naive` ones (each at its own shapes, for contrast), the number of compilations the padded ones
    should cost (`expected_compiles`: one per shape bucket they fall in), and metrics to report."""

    padded: list
    naive: list | None = None
    expected_compiles: int = 1
    metrics: dict = dataclasses.field(default_factory=dict)


# name → module defining FAMILY (imported on first use, so a family's dependencies load only when it is used), or a
# Family itself (a family defined elsewhere, e.g. in a test, is added to this dict and is then a family like these).
FAMILIES = {
    "geolink": "geolink_jax.geolink.family",
    "mae": "geolink_jax.mae.family",
    "gair": "geolink_jax.gair.family",
    "dofa_clip": "geolink_jax.dofa_clip.family",
}


def get_family(name) -> Family:
    """The family called `name`; an unknown name is a ValueError that lists the known ones."""
    if isinstance(name, Family):
        return name
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; known families: {', '.join(sorted(FAMILIES))}")
    entry = FAMILIES[name]
    return entry if isinstance(entry, Family) else importlib.import_module(entry).FAMILY


def data_problem(family, manifest, path):
    """The one-line problem (naming the directory and both formats) when a data manifest's records are not the
    family's (another family's shards), else None: callers check before any record is read."""
    found = manifest.get("format")
    if found and found != family.record_format:
        made_by = next((f.name for f in map(get_family, FAMILIES) if f.record_format == found), None)
        by = f" (made by `preprocess --family {made_by}`)" if made_by else ""
        return (f"{path}: holds {found} records{by}; the {family.name} family reads {family.record_format} records "
                f"(`preprocess --family {family.name}` makes them)")
    return None


def family_of(model_cfg):
    """The name of the family whose model config dataclass `model_cfg` is."""
    for name in FAMILIES:
        if type(model_cfg) is get_family(name).config_cls:
            return name
    raise ValueError(f"{type(model_cfg).__name__} is no family's model config")


def step_flops(family, model_cfg, batch_size, manifest=None):
    """Analytic matmul FLOPs of one train step of `batch_size` samples (per-sample work + batch-shared work)."""
    family = get_family(family)
    return family.flops_per_sample(model_cfg, manifest) * batch_size + family.flops_shared(model_cfg)


def model_config(family, config):
    """The run config's `model` block → the family's model config dataclass."""
    family = get_family(family)
    return config_from_dict(family.config_cls, config.model.to_dict() if hasattr(config.model, "to_dict")
                            else config.model)


# ------------------------------------------------------------------ the three-way split of a module's state
def abstract_model(family, model_cfg):
    """The family's module built with ShapeDtypeStructs instead of arrays: no memory, no random init."""
    family = get_family(family)
    return nnx.eval_shape(lambda: family.build(model_cfg, nnx.Rngs(0)))


def abstract_params(family, model_cfg):
    """Every Param (trained and frozen) of the family's module as ShapeDtypeStructs in the nnx.to_pure_dict layout:
    the targets of converters and the shapes of parameter counts."""
    state = nnx.state(abstract_model(family, model_cfg), nnx.Param)
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), pure(state))


def split(model, family):
    """module → (graphdef, params, frozen, state): trained Params, other Params, non-Param variables (nnx States).
    RNG variables are not state: every random draw comes from the step's key."""
    family = get_family(family)
    frozen_filter = nnx.All(nnx.Param, nnx.Not(family.trainable))
    graphdef, params, frozen, state = nnx.split(model, family.trainable, frozen_filter, ...)
    return graphdef, params, frozen, state


def pure(state):
    """nnx State → nested dict of arrays (what the trainer, optimizer and checkpoints hold)."""
    return nnx.to_pure_dict(state)


def merge(graphdef, abstract_states, pure_dicts):
    """Rebuild a module from its graphdef, the (abstract) States of `split` and matching pure dicts of arrays."""
    states = []
    for abstract, values in zip(abstract_states, pure_dicts):
        state = jax.tree.map(lambda x: x, abstract)  # replace_by_pure_dict mutates: work on a copy
        nnx.replace_by_pure_dict(state, values)
        states.append(state)
    return nnx.merge(graphdef, *states)
