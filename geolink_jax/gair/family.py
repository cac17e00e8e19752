"""The GAIR family (Sentinel-2 patches + street-view photos + their locations; the model is gair/model.py).

Batch: see gair/pipeline.py (host) and gair/model.py (what the loss takes after `pipeline.step_inputs`). The
location queue is model state: the trainer carries it out of every step and checkpoints it.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from geolink_jax import family as family_lib
from geolink_jax.gair import commands, pipeline, preprocess
from geolink_jax.gair import convert as gair_convert
from geolink_jax.gair.model import GAIR, GAIRConfig, trainable


def build(cfg, rngs, weights=None):
    """The GAIR module; `weights` (what `initial_weights` read from the files the config names, passed into the
    jitted initialisation as arguments, not constants) replace the students' and teachers' initial weights, and a
    teacher_init "student" copies its student after that."""
    model = GAIR(cfg, rngs=rngs)
    if weights:
        for part, values in weights.items():
            _load(getattr(model, part), values)
        if cfg.teachers:
            for enc in ("rs", "sv"):
                if getattr(cfg.teacher_init, enc) == "student":
                    _load(getattr(model, f"teacher_{enc}"), nnx.to_pure_dict(nnx.state(getattr(model, f"{enc}_encoder"),
                                                                                       nnx.Param)))
    if cfg.location_init:
        state = nnx.state(model.location_encoder, nnx.Param)
        target = nnx.to_pure_dict(state)
        nnx.replace_by_pure_dict(state, geoclip_location_params(cfg.location_init, target, cfg.location.out_dim))
        nnx.update(model.location_encoder, state)
    return model


def _load(module, values):
    """Param values (a nested dict, possibly partial: a re-initialised patch layer is absent) into `module`."""
    state = nnx.state(module, nnx.Param)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    flat.update(traverse_util.flatten_dict(values))  # partial: keys the dict lacks keep their initialisation
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
    nnx.update(module, state)


def initial_weights(cfg):
    """{part: params} read from the weight files `student_init` / `teacher_init` name (host arrays), or None. Parts:
    rs_encoder, sv_encoder (students), teacher_rs, teacher_sv. Checked: a student takes "" or a file, a teacher
    "student" or a file."""
    from geolink_jax.convert.files import load_weights

    out, abstract = {}, None
    for role, init, keep in (("student", cfg.student_init, ""), ("teacher", cfg.teacher_init, "student")):
        for enc in ("rs", "sv"):
            source = getattr(init, enc)
            if source == keep:
                continue
            if source in ("", "student"):
                raise ValueError(f"model.{role}_init.{enc}={source!r}: a {role} takes {keep!r} or a weight file")
            part = f"{enc}_encoder" if role == "student" else f"teacher_{enc}"
            if role == "teacher" and not cfg.teachers:
                continue
            path = _weight_file(source)
            sd, _ = load_weights(path)
            # the target shapes, traced only when a file is named (the default run reads none)
            abstract = abstract if abstract is not None else family_lib.abstract_params(FAMILY, cfg)
            if enc == "rs":
                out[part] = gair_convert.rs_from_torchgeo(sd, abstract[part], str(path), reinit_patch_layer=True)
            else:
                out[part] = gair_convert.sv_from_hf(sd, abstract[part], str(path))
    return out or None


def _weight_file(source):
    """A weight file, or a model directory holding one (model.safetensors, pytorch_model.bin, as HF writes them)."""
    import pathlib

    path = pathlib.Path(source)
    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: a directory without model.safetensors or pytorch_model.bin")
        return found[0]
    return path


def geoclip_location_params(source, target, out_dim):
    """GeoCLIP location-encoder weights ("geoclip": the file its wheel ships; else a path) → our location encoder
    params like `target`, the heads kept from `target` unless they are GeoCLIP's width (512)."""
    import pathlib

    from geolink_jax.convert.files import load_weights

    if source == "geoclip":
        import importlib.util

        spec = importlib.util.find_spec("geoclip")
        if spec is None:
            raise FileNotFoundError("model.location_init='geoclip' needs the geoclip package (pip install "
                                    "--no-deps geoclip==1.3.0) or a path to its location_encoder_weights.pth")
        source = pathlib.Path(spec.origin).parent / "model" / "weights" / "location_encoder_weights.pth"
    sd, _ = load_weights(source)
    keep_heads = out_dim != 512
    heads = {k for k in sd if ".head." in k} if keep_heads else set()
    sub = {i: {k: v for k, v in b.items() if not (keep_heads and k == "head")} for i, b in target["branches"].items()}
    loaded, _ = gair_convert.params_from_named(
        sd, {"branches": sub},
        lambda p: gair_convert._geoclip(tuple(map(str, p))), heads, str(source))
    for i, branch in loaded["branches"].items():
        target["branches"][i].update(branch)
    return target


def _features(model, wavelengths_um, modality="image"):
    from geolink_jax.gair import embed

    return embed.features(model, wavelengths_um, modality)


def loss(model, batch, key, ctx):
    return model.loss(pipeline.step_inputs(batch, model.cfg.rs.image_size), ctx.batch_groups,
                      dropout_key=key if ctx.train else None)


def pipeline_config(config, model_cfg, train=True, process_count=1):
    d = config.data
    return pipeline.GAIRPipelineConfig(
        batch_size=config.batch_size // process_count, sv_budget=model_cfg.sv_budget,
        rs_size=model_cfg.rs.image_size, sv_size=model_cfg.sv.image_size, band_mean=tuple(model_cfg.band_mean),
        band_std=tuple(model_cfg.band_std), train=train, seed=config.seed, worker_count=d.worker_count,
        read_threads=d.read_threads, sampling=d.get("sampling", "patch"),
        on_device=bool(d.get("augment_on_device", False)) and train)


def dataset(paths, manifest, config, model_cfg, process_index=0, process_count=1):
    if config.data.get("augment_on_device", False):
        stored_rs_size(manifest)  # one stored size, or one clear line now
    return pipeline.make_dataset(paths, pipeline_config(config, model_cfg, process_count=process_count),
                                 process_index, process_count, manifest)


def default_data(config, workdir):
    return preprocess.bundled(f"{workdir}/data")


def model_fields_from_data(manifest):
    if "bands" not in manifest:
        return {}
    return {"rs": {"in_channels": len(manifest["bands"])}}


def stored_rs_size(manifest):
    """(height, width) of the one stored patch size that on-device augmentation needs (DataError where the patches
    differ in size: their mean is not their max)."""
    from geolink_jax.data.shards import DataError

    sizes = (manifest or {}).get("rs_size", {})
    h, w = (sizes.get(k, {}) for k in ("height", "width"))
    if not h or not w or h["mean"] != h["max"] or w["mean"] != w["max"]:
        raise DataError("data.augment_on_device needs patches of one size; the data's vary (height up to "
                        f"{h.get('max')}, width up to {w.get('max')} px): preprocess patches of one size, or train "
                        "with the host path")
    return int(h["max"]), int(w["max"])


def abstract_batch(model_cfg, batch_size, manifest=None, data=None):
    b, s, r, v = batch_size, model_cfg.sv_budget, model_cfg.rs.image_size, model_cfg.sv.image_size
    f32, i32 = jnp.float32, jnp.int32
    sds = jax.ShapeDtypeStruct
    if data is not None and data.get("augment_on_device", False):
        on_device = dict(rs=sds((b, *stored_rs_size(manifest), model_cfg.rs.in_channels), jnp.uint8),
                         sv_flip=sds((b, s), jnp.bool_))
    else:
        on_device = dict(rs=sds((b, r, r, model_cfg.rs.in_channels), f32))
    return dict(**on_device, sv=sds((b, s, v, v, 3), jnp.uint8),
                sv_valid=sds((b, s), jnp.bool_), sv_lonlat=sds((b, s, 2), f32), sv_rel=sds((b, s, 2), f32),
                rs_jitter_apply=sds((b,), jnp.bool_), rs_jitter_factors=sds((b, 4), f32),
                rs_jitter_order=sds((b, 4), i32), sv_jitter_apply=sds((b, s), jnp.bool_),
                sv_jitter_factors=sds((b, s, 4), f32), sv_jitter_order=sds((b, s, 4), i32))


def example_batch(model_cfg, batch_size, seed=0):
    """The bundled demo patches through the evaluation pipeline (no augmentation), cycled to batch_size."""
    import tempfile

    import ml_collections

    from geolink_jax.data import outputs, shards

    with tempfile.TemporaryDirectory() as tmp:
        out = preprocess.bundled(f"{tmp}/data")
        manifest = outputs.load_manifest(out)
        config = ml_collections.ConfigDict(dict(batch_size=1, seed=seed, data=dict(worker_count=0, read_threads=0)))
        cfg = pipeline_config(config, model_cfg, train=False)
        samples = [pipeline.PatchToSample(cfg).random_map(r, np.random.default_rng(seed))
                   for r in _raw_records(shards.manifest_shards(out, manifest))]
    samples = (samples * batch_size)[:batch_size]
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def _raw_records(paths):
    from geolink_jax.data import shards

    source = shards.ShardSource(paths)
    return [source[i] for i in range(len(source))]


def _vit_forward(tokens, width, depth, mlp_dim):
    """Matmul FLOPs of a pre-norm ViT on `tokens` tokens (qkv, out, QKᵀ, AV, MLP)."""
    return depth * (2 * tokens * (4 * width * width + 2 * width * mlp_dim) + 4 * tokens * tokens * width)


def step_flops(cfg: GAIRConfig):
    """Analytic matmul FLOPs of one train step per RS patch (with its sv_budget photos), by part: trained parts
    3× forward (forward + backward), teachers 1× forward."""
    rs, sv, loc = cfg.rs, cfg.sv, cfg.location
    t_rs = (rs.image_size // rs.patch_size) ** 2
    t_sv = (sv.image_size // sv.patch_size) ** 2 + 1
    rs_f = 2 * t_rs * rs.patch_size ** 2 * rs.in_channels * rs.width + _vit_forward(t_rs, rs.width, rs.depth,
                                                                                     4 * rs.width)
    sv_f = cfg.sv_budget * (2 * (t_sv - 1) * sv.patch_size ** 2 * 3 * sv.width
                            + _vit_forward(t_sv, sv.width, sv.depth, sv.mlp_dim) + 2 * 2 * sv.width * sv.width)
    nili_f = 2 * t_rs * 9 * rs.width * rs.width
    return dict(rs=3 * rs_f, sv=3 * sv_f, location=3 * cfg.sv_budget * location_forward(loc), nili=3 * nili_f,
                teachers=(rs_f + sv_f) if cfg.teachers else 0)


def location_forward(loc):
    """Matmul FLOPs of the location encoder on one coordinate."""
    return len(loc.sigmas) * 2 * (2 * loc.frequencies * loc.hidden + 2 * loc.hidden ** 2 + loc.hidden * loc.out_dim)


def queue_flops(cfg: GAIRConfig):
    """Per step, shared by the batch: the queue's coordinates re-encoded with gradients (3× forward)."""
    return 3 * cfg.queue_size * location_forward(cfg.location)


def flops_per_sample(model_cfg, manifest=None):
    """Per RS patch, without the batch-shared queue encoding (`queue_flops`, per step)."""
    return sum(step_flops(model_cfg).values())


def pictures(model, host_batch, workdir, count=3):
    """workdir/sv_similarity.png: for the first photo of up to `count` distinct patches of a host batch, its
    similarity to NILI queries over its patch (where would this photo be?) beside the photo."""
    import hashlib
    import pathlib

    from geolink_jax import pictures as pics
    from geolink_jax.gair import embed

    samples, seen = [], set()
    for i in range(len(host_batch["rs"])):
        sample = {k: np.asarray(v)[i] for k, v in host_batch.items() if k != "stats"}
        key = hashlib.sha1(np.ascontiguousarray(sample["rs"]).tobytes()).hexdigest()
        if key not in seen and sample["sv_valid"][0] and len(samples) < count:  # a patch drawn twice is shown once
            seen.add(key)
            samples.append(sample)
    if samples:
        pics.save_figure(embed.similarity_figure(model, samples), pathlib.Path(workdir) / "sv_similarity.png")


# ------------------------------------------------------------------ weights
def infer_config(state_dict):
    """The model config a GAIR state_dict implies (ViT-B encoders as released): teachers present or not, the RS
    final norm (research code) or not (inference package), the band count, the RS grid from nothing (any size)."""
    import dataclasses

    sd = gair_convert.strip_module(state_dict)
    rs_in = np.shape(sd.get("rs_encoder.s2_encoder.linear_input.weight", np.zeros((0, 640))))[1]
    base = GAIRConfig()
    rs = dataclasses.replace(base.rs, in_channels=int(rs_in) // base.rs.patch_size ** 2,
                             final_norm="rs_encoder.s2_encoder.transformer.norm_out.weight" in sd)
    return dataclasses.replace(base, rs=rs, teachers=any(k.startswith("rs_encoder_teacher.") for k in sd),
                               nili_convention=base.nili_convention if rs.final_norm else "head")


def _gair_import(state_dict, cfg, source, **_):
    cfg = cfg or infer_config(state_dict)
    params, _queue, report = gair_convert.params_from_gair(state_dict, family_lib.abstract_params(FAMILY, cfg),
                                                           source)
    return params, cfg, report


def _encoder_import(part, from_fn):
    """One encoder from its reference layout into a fresh GAIR (every other parameter its initialisation)."""
    def imp(state_dict, cfg, source, **options):
        cfg = cfg or GAIRConfig()
        target = nnx.to_pure_dict(nnx.state(build(cfg, nnx.Rngs(0)), nnx.Param))
        fresh = target[part]
        target[part] = dict(fresh, **from_fn(state_dict, fresh, source, **options))  # a left-out layer stays fresh
        if cfg.teachers and f"teacher_{part[:2]}" in target:  # the teachers start as copies of the encoders
            target[f"teacher_{part[:2]}"] = target[part]
        return target, cfg, dict(converted=len(state_dict))
    return imp


CONVERTERS = {
    "gair": family_lib.Converter(lambda params, cfg: gair_convert.gair_state_dict(params), _gair_import,
                                 "GAIR's checkpoint.pth layout (research code; `module.` prefix and the `model` "
                                 "entry accepted)"),
    "torchgeo_croma": family_lib.Converter(
        lambda params, cfg: gair_convert.rs_to_torchgeo(params["rs_encoder"]),
        _encoder_import("rs_encoder", lambda sd, target, source, reinit_patch_layer=False, **_:
                        gair_convert.rs_from_torchgeo(sd, target, source, reinit_patch_layer)),
        "the RS encoder as torchgeo's croma.ViT (or CROMA's release: its optical encoder)",
        arguments=lambda parser: parser.add_argument(
            "--reinit-patch-layer", action="store_true",
            help="a CROMA patch layer for another band count (its 12 bands into GAIR's 10) keeps the fresh "
                 "initialisation, as GAIR's research code does, instead of failing")),
    "hf_vit": family_lib.Converter(lambda params, cfg: gair_convert.sv_to_hf(params["sv_encoder"]),
                                   _encoder_import("sv_encoder", lambda sd, target, source, **_:
                                                   gair_convert.sv_from_hf(sd, target, source)),
                                   "the SV encoder as a transformers ViTModel"),
}


FAMILY = family_lib.Family(
    name="gair",
    record_format=preprocess.FORMAT,
    config_cls=GAIRConfig,
    build=build,
    loss=loss,
    dataset=dataset,
    default_data=default_data,
    model_fields_from_data=model_fields_from_data,
    abstract_batch=abstract_batch,
    example_batch=example_batch,
    flops_per_sample=flops_per_sample,
    flops_shared=queue_flops,
    configs={"gair_demo": "geolink_jax.gair.configs.demo", "gair_vit_b": "geolink_jax.gair.configs.vit_b"},
    converters=CONVERTERS,
    trainable=trainable,
    pictures=pictures,
    log_keys=("loss", "clip", "loc_sv", "loc_rs"),
    preprocess=commands.PREPROCESS,
    write_embeddings=commands.write_embeddings,
    embed_arguments=commands.embed_arguments,
    features=_features,
    # the research lr rule counts photos (a sample there is one photo with a patch); a record of ours is a patch
    # with up to sv_budget photos
    sample_unit=lambda model_cfg: ("photos", model_cfg.sv_budget),
    device_augment=True,
    num_examples=lambda manifest, config: manifest.get(
        "num_sv" if config.data.get("sampling", "patch") == "photo" else "num_records"),
    initial_weights=initial_weights,
    recipe_notes=lambda cfg, config: {
        "sampling": (f"a patch with up to {cfg.sv_budget} of its photos per record"
                     if config.data.get("sampling", "patch") == "patch" else "one photo with its own patch per record"),
        "augmentation": "as the research code: RS clipped to mean ± 2σ, bicubic resize, ColorJitter(0.2, 0.2) p 0.7 on "
                        "bands 1-3; photos resized, flipped, ColorJitter(0.1 × 4) p 0.3 after normalisation",
        "dropout": f"SV attention probabilities {cfg.sv.attention_dropout:g}, hidden {cfg.sv.hidden_dropout:g} "
                   "(students in training steps; teachers none)"},
)
