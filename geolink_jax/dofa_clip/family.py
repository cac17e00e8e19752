"""The DOFA-CLIP family (GeoLangBind): any-channel image–text pairs; the model is dofa_clip/model.py, the batches
dofa_clip/pipeline.py."""


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geolink_jax import family as family_lib
from geolink_jax.dofa_clip import commands, pipeline, preprocess
from geolink_jax.dofa_clip import convert as dofa_convert
from geolink_jax.dofa_clip.model import DOFACLIP, DOFACLIPConfig
from geolink_jax.nn.layers import FrozenParam


def trainable(path, var):
    """nnx filter: every Param but the frozen ones (a locked text tower, online teachers)."""
    return isinstance(var, nnx.Param) and not isinstance(var, FrozenParam)


def build(cfg, rngs, weights=None):
    """The model; `weights` ({"teachers": {name: params}}, what `initial_weights` read) go into the online teachers
    (inside the jitted initialisation, as arguments). Without them, online teachers with weight files load them
    here (the eager paths: converters, embedding)."""
    model = DOFACLIP(cfg, rngs=rngs)
    if weights is None:
        weights = initial_weights(cfg) or {}
    for name, values in weights.get("teachers", {}).items():
        state = nnx.state(model.teachers[name], nnx.Param)
        nnx.replace_by_pure_dict(state, values)
        nnx.update(model.teachers[name], state)
    return model


def initial_weights(cfg):
    """{"teachers": {name: params}} of the online teachers that name a weight file (host arrays), or None."""
    out = {}
    for t in cfg.teachers:
        if t.online and t.weights:
            from geolink_jax.dofa_clip.towers import ImageTower

            abstract = nnx.eval_shape(lambda t=t: ImageTower(t.tower, rngs=nnx.Rngs(0)))
            target = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
            out[t.name] = dofa_convert.image_tower_params(t.weights, t.tower, target)
    return {"teachers": out} if out else None


def loss(model, batch, key, ctx):
    return model.loss(pipeline.step_inputs(batch, model.cfg.image.image_size), ctx)


def pipeline_config(config, model_cfg, train=True, process_count=1, manifest=None):
    d = config.data
    return pipeline.DOFACLIPPipelineConfig(
        batch_size=config.batch_size // process_count, image_size=model_cfg.image.image_size,
        context_length=model_cfg.text.context_length, tokenizer=model_cfg.tokenizer,
        band_buckets=tuple(model_cfg.band_buckets),
        teachers=tuple(t.name for t in model_cfg.teachers if not t.online),
        teacher_band_rule=model_cfg.teacher_band_rule,
        source_weights=tuple(sorted(dict(d.get("source_weights", {}) or {}).items())), train=train,
        seed=config.seed, worker_count=d.worker_count, read_threads=d.read_threads,
        canvas=canvas(manifest) if manifest is not None and train and d.get("augment_on_device", False) else ())


def canvas(manifest):
    """(height, width) of on-device augmentation's canvas: the data's largest image."""
    sizes = manifest.get("image_size", {})
    return int(sizes["height"]["max"]), int(sizes["width"]["max"])


def dataset(paths, manifest, config, model_cfg, process_index=0, process_count=1):
    check_data(manifest, model_cfg)
    return pipeline.make_dataset(paths, manifest, pipeline_config(config, model_cfg, process_count=process_count,
                                                                  manifest=manifest), process_index, process_count)


def check_data(manifest, model_cfg):
    """Before any batch: the tokenizer loads and its ids fit the text tower's vocabulary (a larger id would be
    clamped by the embedding lookup, silently); the shards hold every cached teacher the model distils from, with
    its shape; the band counts fit a bucket."""
    from geolink_jax.config import ConfigError
    from geolink_jax.data.shards import DataError
    from geolink_jax.dofa_clip.tokenizer import make_tokenizer

    tok = make_tokenizer(model_cfg.tokenizer, model_cfg.text.context_length)
    if tok.vocab_size > model_cfg.text.vocab_size:
        raise ConfigError(f"model.tokenizer {model_cfg.tokenizer!r} has {tok.vocab_size} tokens, the text tower's "
                          f"model.text.vocab_size is {model_cfg.text.vocab_size}")
    have = manifest.get("teachers", {})
    for t in model_cfg.teachers:
        if t.online:
            continue
        if t.name not in have:
            raise DataError(f"the data hold no cached features of teacher {t.name!r} (cached: "
                            f"{', '.join(have) or 'none'}); run `geolink-jax dofa-teachers` on them")
        shape = tuple(have[t.name]["shape"])
        if shape != (t.tokens, t.width):
            raise DataError(f"teacher {t.name}: the cached features are {shape}, the model expects "
                            f"{(t.tokens, t.width)}")
    model_cfg.bucket(int(manifest.get("max_bands", 3)))


def default_data(config, workdir):
    """The bundled demo pairs; with cached teachers in the model, their features are cached into a copy."""
    from geolink_jax.dofa_clip import teachers

    model_cfg = family_lib.model_config(FAMILY, config)
    out = preprocess.bundled(f"{workdir}/data")
    cached = [t for t in model_cfg.teachers if not t.online]
    return teachers.bundled_with_features(out, f"{workdir}/data_teachers", cached) if cached else out


def abstract_batch(model_cfg, batch_size, manifest=None, data=None):
    b, s, length = batch_size, model_cfg.image.image_size, model_cfg.text.context_length
    c = model_cfg.bucket(int((manifest or {}).get("max_bands", 3)))
    sds = jax.ShapeDtypeStruct
    if data is not None and data.get("augment_on_device", False) and manifest:
        image = dict(image=sds((b, *canvas(manifest), c), jnp.uint8), crop=sds((b, 4), jnp.float32),
                     image_hw=sds((b, 2), jnp.int32))
    else:
        image = dict(image=sds((b, s, s, c), jnp.float32))
    out = dict(**image, wavelengths=sds((b, c), jnp.float32),
               band_valid=sds((b, c), jnp.bool_), tokens=sds((b, length), jnp.int32),
               teacher_bands=sds((b, 3), jnp.int32))
    for t in model_cfg.teachers:
        if not t.online:
            out[f"teacher_{t.name}"] = sds((b, t.tokens, t.width), jnp.float16)
    return out


def example_batch(model_cfg, batch_size, seed=0, bands=None):
    """Bundled demo pairs through the evaluation transform, cycled to batch_size: those of the group with `bands`
    bands (default: the largest group, the OSM-captioned RGB tiles)."""
    import tempfile

    from geolink_jax.data import outputs, shards

    with tempfile.TemporaryDirectory() as tmp:
        out = preprocess.bundled(f"{tmp}/data")
        manifest = outputs.load_manifest(out)
        source = shards.ShardSource(shards.manifest_shards(out, manifest))
        groups = pipeline.record_groups(manifest)
        counts = [len(g["wavelengths"]) for g in manifest["groups"]]
        idx = np.flatnonzero(groups == (0 if bands is None else counts.index(bands)))
        cfg = pipeline.DOFACLIPPipelineConfig(
            batch_size=batch_size, image_size=model_cfg.image.image_size,
            context_length=model_cfg.text.context_length, tokenizer=model_cfg.tokenizer,
            band_buckets=tuple(model_cfg.band_buckets), teacher_band_rule=model_cfg.teacher_band_rule, train=False)
        t = pipeline.PairToSample(cfg)
        samples = [t.random_map(source[int(i)], np.random.default_rng(seed)) for i in idx]
    samples = (samples * batch_size)[:batch_size]
    batch = {k: np.stack([s[k] for s in samples]) for k in samples[0]}
    rng = np.random.default_rng(seed)
    for te in model_cfg.teachers:  # stand-in cached features (benchmarks): random, of the right shape
        if not te.online:
            batch[f"teacher_{te.name}"] = rng.normal(size=(batch_size, te.tokens, te.width)).astype(np.float16)
    return batch


def band_subset_batch(model_cfg, batch_size, count, pad=True, seed=0):
    """An example batch of the bundled Sentinel-2 pairs' first `count` real bands (2 ≤ count ≤ 13), padded to the
    band bucket, or (`pad=False`) at exactly `count` channels."""
    batch = example_batch(model_cfg, batch_size, seed, bands=13)
    cb = model_cfg.bucket(count) if pad else count
    out = dict(batch)
    img = np.zeros(batch["image"].shape[:3] + (cb,), np.float32)
    img[..., :count] = batch["image"][..., :count]
    wl = np.zeros((batch_size, cb), np.float32)
    wl[:, :count] = batch["wavelengths"][:, :count]
    from geolink_jax.dofa_clip import maka

    out.update(image=img, wavelengths=wl, band_valid=np.tile(np.arange(cb) < count, (batch_size, 1)),
               teacher_bands=np.tile(np.asarray(maka.teacher_bands(wl[0, :count], model_cfg.teacher_band_rule),
                                                np.int32), (batch_size, 1)))
    return out


def varied_batches(model_cfg, batch_size, count):
    """Batches of 2, 3, … bands (the real Sentinel-2 bands of the demo, first k): padded to the band buckets (one
    compilation per bucket hit); naive: each at its own band count."""
    counts = [2 + (i * 5) % 12 for i in range(count)]
    return family_lib.VariedBatches(
        padded=[band_subset_batch(model_cfg, batch_size, k) for k in counts],
        naive=[band_subset_batch(model_cfg, batch_size, k, pad=False) for k in counts],
        expected_compiles=len({model_cfg.bucket(k) for k in counts}),
        metrics=dict(band_counts=counts))


def _vit(tokens, width, depth, mlp_dim):
    return depth * (2 * tokens * (4 * width * width + 2 * width * mlp_dim) + 4 * tokens * tokens * width)


def step_flops(cfg: DOFACLIPConfig, channels=3):
    """Analytic matmul FLOPs of one train step per pair, by part: trained parts 3× forward, frozen parts (a locked
    text tower: no backward at all; online teachers) 1× forward. The patch-embedding convolution is counted; the
    kernel generator (once per batch) is not."""
    im, tx = cfg.image, cfg.text
    t = im.grid ** 2
    image = (2 * t * im.patch_size ** 2 * channels * im.width + _vit(t, im.width, im.depth, im.mlp_dim)
             + 2 * (2 * t * im.width * im.width + 2 * im.width * im.width + 2 * t * im.width)
             + 2 * 2 * im.width * im.mlp_dim)  # MAP head: kv, q/proj, attention, MLP
    text = _vit(tx.context_length, tx.width, tx.depth, tx.mlp_dim) + 2 * tx.width * tx.embed_dim
    out = dict(image=3 * image, text=(1 if cfg.lock_text else 3) * text)
    translators = 0
    teachers = 0
    for te in cfg.teachers:
        if te.translate:
            translators += 2 * te.tokens * 9 * im.width * te.width
        if te.online:
            tw = te.tower
            teachers += _vit(tw.grid ** 2, tw.width, tw.depth, tw.mlp_dim) + 2 * tw.grid ** 2 * tw.patch_size ** 2 * 3 \
                * tw.width
    out.update(translators=3 * translators, teachers=teachers)
    return out


def flops_per_sample(model_cfg, manifest=None):
    return sum(step_flops(model_cfg).values())


def generator_flops(cfg: DOFACLIPConfig, channels=3):
    """Per step, shared by the batch: DOFA's kernel generator (FC layers, the one-layer transformer over 128 weight
    tokens + C wavelength tokens + the bias token, the per-band kernel and the bias heads), 3× forward."""
    e, t, k, d = 128, 128 + channels + 1, cfg.image.patch_size, cfg.image.width
    layer = 2 * t * (4 * e * e + 2 * e * 2048) + 4 * t * t * e
    return 3 * (2 * 2 * channels * e * e + layer + 2 * channels * e * k * k * d + 2 * e * d)


# ------------------------------------------------------------------ weights
def infer_config(state_dict):
    """The model config a DOFA-CLIP / open_clip SigLIP state_dict implies: tower widths, depths, sizes, vocabulary,
    the translators' teachers (names, grids, widths)."""
    import dataclasses

    from geolink_jax.dofa_clip import maka
    from geolink_jax.dofa_clip.towers import ImageTowerConfig

    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    shape = lambda k: tuple(np.shape(sd[k]))  # noqa: E731
    width = shape("visual.trunk.pos_embed")[-1]
    tokens = shape("visual.trunk.pos_embed")[1]
    depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("visual.trunk.blocks."))
    mlp = shape("visual.trunk.blocks.0.mlp.fc1.weight")[0]
    rgb = "visual.trunk.patch_embed.proj.weight" in sd
    patch = (shape("visual.trunk.patch_embed.proj.weight")[-1] if rgb
             else int(round((shape("visual.trunk.patch_embed.weight_generator.fc_weight.weight")[0] / width) ** 0.5)))
    grid = int(round(tokens ** 0.5))
    image = ImageTowerConfig(width=width, depth=depth, heads=width // 64 if width != 1152 else 16, mlp_dim=mlp,
                             # so400m: 384 px, the last 6 px unused
                             patch_size=patch, image_size=384 if (patch, grid) == (14, 27) else grid * patch,
                             patch_embed="rgb" if rgb else "dynamic", taps=(-1,))
    t_width = shape("text.positional_embedding")[-1]
    t_depth = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("text.transformer.resblocks."))
    base = DOFACLIPConfig()
    text = dataclasses.replace(base.text, vocab_size=shape("text.token_embedding.weight")[0],
                               context_length=shape("text.positional_embedding")[0], width=t_width, depth=t_depth,
                               heads=t_width // 64 if t_width != 1152 else 16,
                               mlp_dim=shape("text.transformer.resblocks.0.mlp.c_fc.weight")[0],
                               embed_dim=shape("text.text_projection.weight")[0])
    names = sorted({k.split(".")[1] for k in sd if k.startswith("translators.")})
    teachers = tuple(maka.TeacherConfig(n, int(np.prod(shape(f"translators.{n}.norm1.layer_norm.weight")[1:])),
                                        shape(f"translators.{n}.conv1.weight")[0]) for n in names)
    return dataclasses.replace(base, image=image, text=text, teachers=teachers)


def _dofa_clip_import(state_dict, cfg, source, **_):
    cfg = cfg or infer_config(state_dict)
    params, report = dofa_convert.params_from_dofa_clip(state_dict, family_lib.abstract_params(FAMILY, cfg), source)
    return params, cfg, report


def _patch_embed_import(state_dict, cfg, source, **_):
    from flax import nnx

    cfg = cfg or DOFACLIPConfig()
    target = nnx.to_pure_dict(nnx.state(build(cfg, nnx.Rngs(0)), nnx.Param))
    target["image"]["patch_embed"] = dofa_convert.patch_embed_from_torch(state_dict, target["image"]["patch_embed"],
                                                                         source)
    return target, cfg, dict(converted=len(state_dict))


CONVERTERS = {
    "dofa_clip": family_lib.Converter(lambda params, cfg: dofa_convert.dofa_clip_state_dict(params),
                                      _dofa_clip_import,
                                      "DOFA-CLIP's / open_clip's CustomTextCLIP layout (visual.trunk.*, text.*, "
                                      "logit_scale/bias, translators.*)"),
    "torchgeo_dofa": family_lib.Converter(
        lambda params, cfg: dofa_convert.patch_embed_to_torch(params["image"]["patch_embed"]), _patch_embed_import,
        "the dynamic patch embedding as torchgeo's DOFAEmbedding"),
}


def pictures(model, host_batch, workdir, count=8):
    """workdir/similarity.png: up to `count` images of the last batch (the teachers' 3 bands) against their
    captions: σ(logit) per cell (the true pairs on the diagonal, ringed), the captions listed on the right."""
    import pathlib

    from PIL import Image, ImageDraw

    from geolink_jax.dofa_clip.tokenizer import display_text, make_tokenizer

    n = min(count, len(host_batch["image"]))
    b = pipeline.step_inputs({k: jnp.asarray(np.asarray(v)[:n]) for k, v in host_batch.items() if k != "stats"},
                             model.cfg.image.image_size)
    host_batch = {**host_batch, "image": np.asarray(b["image"])}
    img, _ = model.encode_image(b["image"], b["wavelengths"][0], b["band_valid"][0])
    probs = np.asarray(jax.nn.sigmoid(model.logits(img, model.encode_text(b["tokens"]))))
    tok = make_tokenizer(model.cfg.tokenizer, model.cfg.text.context_length)
    texts = [display_text(tok.decode(t)) for t in np.asarray(host_batch["tokens"])[:n]]
    cell, legend = 64, 420
    out = Image.new("RGB", (cell * (n + 1) + legend, cell * (n + 1)), "white")
    draw = ImageDraw.Draw(out)
    bands = np.asarray(host_batch["teacher_bands"])[0]
    top = max(float(probs.max()), 1e-6)
    for i in range(n):
        rgb = np.asarray(host_batch["image"])[i][..., bands]
        rgb = np.clip((rgb * 0.5 + 0.5) * 255, 0, 255).astype(np.uint8)
        out.paste(Image.fromarray(rgb).resize((cell, cell)), (0, cell * (i + 1)))
        draw.text((cell * (i + 1) + 4, cell // 2), f"text {i}", fill="black")
        draw.text((cell * (n + 1) + 8, cell * (i + 1) + 4), f"{i}: {texts[i][:64]}", fill="black")
        for j in range(n):
            v = float(probs[i, j]) / top  # colours relative to the batch's highest score
            box = [cell * (j + 1), cell * (i + 1), cell * (j + 2) - 1, cell * (i + 2) - 1]
            draw.rectangle(box, fill=(int(255 * v), int(120 * v), int(40 * (1 - v))),
                           outline="white" if i == j else None, width=2)
            draw.text((box[0] + 4, box[1] + 4), f"{probs[i, j]:.2f}", fill="white")
    draw.text((4, 4), "sigmoid(logit)\nimage x text", fill="black")  # the default font has no σ, ×
    out.save(pathlib.Path(workdir) / "similarity.png")


def features(model, wavelengths_um, modality="image"):
    """`geolink-jax evaluate` (downstream/features.py). "image": the image tower's pooled (MAP) output, its
    L2-normalised image–text embedding, its final tokens as a grid and four block outputs (levels), for images
    [B, H, W, C] in [0, 1] with any bands (their wavelengths condition the patch embedding): resized to the tower's
    size, (x − 0.5) / 0.5 as the pipeline's 8-bit pixels, bands zero-padded to the model's bucket. "text": the text
    tower's normalised embedding of strings (zero-shot prompts, captions)."""
    from geolink_jax.dofa_clip.tokenizer import make_tokenizer
    from geolink_jax.downstream import features as features_lib
    from geolink_jax.nn.losses import l2_normalize

    cfg = model.cfg
    if modality == "text":
        tokenize = make_tokenizer(cfg.tokenizer, cfg.text.context_length)
        return features_lib.FeatureFn(model, lambda m, ids: dict(embedding=m.encode_text(ids)), modality,
                                      prepare=lambda texts: jnp.asarray(tokenize(list(texts))))
    if modality != "image":
        raise features_lib.unsupported("dofa_clip", modality, ("image", "text"))
    c = len(wavelengths_um)
    cb = cfg.bucket(c)
    size, g = cfg.image.image_size, cfg.image.grid
    wl = jnp.asarray(np.pad(np.asarray(wavelengths_um, np.float32), (0, cb - c)))
    valid = jnp.arange(cb) < c
    blocks = features_lib.level_blocks(cfg.image.depth)

    def image(m, x):
        if x.shape[1:3] != (size, size):
            x = jax.image.resize(x, (x.shape[0], size, size, c), "bilinear", antialias=True)
        x = jnp.pad((x - 0.5) / 0.5, ((0, 0), (0, 0), (0, 0), (0, cb - c)))
        pooled, taps = m.image(x, wl, valid, taps=(*blocks, -1))
        pooled = pooled.astype(jnp.float32)
        return dict(pooled=pooled, embedding=l2_normalize(pooled),
                    grid=taps[-1].reshape(x.shape[0], g, g, -1).astype(jnp.float32),
                    levels=features_lib.stack_levels(taps, blocks, (g, g)))

    return features_lib.FeatureFn(model, image, modality)


def recipe_notes(cfg):
    online = [t.name for t in cfg.teachers if t.online]
    cached = [t.name for t in cfg.teachers if not t.online]
    crop = "random resized crop (scale 0.9-1) of every image"
    if cached:
        crop = f"none (records carry cached features of {', '.join(cached)}, so they are not cropped)"
        crop += f"; online teachers ({', '.join(online)}) see the whole image" if online else ""
    elif online:
        crop += "; the teachers run on the same crop"
    return {
        "augmentation": crop,
        "teachers": ", ".join(f"{t.name} (weight {t.weight:g}{', translator' if t.translate else ''})"
                              for t in cfg.teachers) or "none",
        "logit scale": (f"clamped to [0, {cfg.logit_scale_max:.3g}] after every update" if cfg.logit_scale_max
                        else "not clamped"),
        "text tower": "locked" if cfg.lock_text else "trained"}


def constrain(params, model_cfg):
    """open_clip's train loop clamps logit_scale to [0, ln 100] after every optimizer step (model.logit_scale_max)."""
    if not model_cfg.logit_scale_max or "logit_scale" not in params:
        return params
    return dict(params, logit_scale=jnp.clip(params["logit_scale"], 0.0, model_cfg.logit_scale_max))


FAMILY = family_lib.Family(
    name="dofa_clip",
    record_format=preprocess.FORMAT,
    config_cls=DOFACLIPConfig,
    build=build,
    loss=loss,
    dataset=dataset,
    default_data=default_data,
    abstract_batch=abstract_batch,
    example_batch=example_batch,
    flops_per_sample=flops_per_sample,
    flops_shared=generator_flops,
    configs={"dofa_clip_demo": "geolink_jax.dofa_clip.configs.demo",
             "dofa_clip_b16": "geolink_jax.dofa_clip.configs.b16",
             "dofa_clip_so400m": "geolink_jax.dofa_clip.configs.so400m"},
    converters=CONVERTERS,
    trainable=trainable,
    pictures=pictures,
    log_keys=("loss", "sigmoid", "maka"),
    preprocess=commands.PREPROCESS,
    write_embeddings=commands.write_embeddings,
    embed_arguments=commands.embed_arguments,
    features=features,
    commands=commands.COMMANDS,
    varied_batches=varied_batches,
    sample_unit=lambda model_cfg: ("pairs", 1),
    device_augment=True,
    initial_weights=initial_weights,
    constrain=constrain,
    recipe_notes=lambda cfg, config: recipe_notes(cfg),
)
