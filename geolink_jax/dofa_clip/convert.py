"""DOFA-CLIP weights ↔ ours. This part: the dynamic patch embedding in torchgeo's `DOFAEmbedding` layout, which
DOFA-CLIP's `dofa_patch_embed.py` shares (fclayer.w1/w2, weight_generator.{transformer_encoder.layers.0.*,
fc_weight, fc_bias, weight_tokens, bias_token}); rules as convert/official.py."""

from geolink_jax.convert.rules import generic_rule, mha_rule, params_from_named, state_dict_from_named, vit_block_rule


def patch_embed_name(path):
    """A path of our DynamicPatchEmbed → (DOFAEmbedding key, rule)."""
    path = tuple(str(p) for p in path)
    top, rest = path[0], path[1:]
    if top in ("fc1", "fc2"):
        return generic_rule(("fclayer", "w" + top[-1], *rest))
    if top in ("weight_tokens", "bias_token"):
        return f"weight_generator.{top}", "copy"
    if top in ("fc_weight", "fc_bias"):
        return generic_rule(("weight_generator", top, *rest))
    pre = "weight_generator.transformer_encoder.layers.0."
    if rest[0] == "self_attn":  # torch MultiheadAttention: packed in_proj, out_proj
        return {("in_proj", "kernel"): (pre + "self_attn.in_proj_weight", "qkv"),
                ("in_proj", "bias"): (pre + "self_attn.in_proj_bias", "qkv"),
                ("out_proj", "kernel"): (pre + "self_attn.out_proj.weight", "proj"),
                ("out_proj", "bias"): (pre + "self_attn.out_proj.bias", "copy")}[rest[1:]]
    key, rule = generic_rule(rest)
    return pre + key, rule


def patch_embed_from_torch(state_dict, target, source="DOFAEmbedding"):
    return params_from_named(state_dict, target, patch_embed_name, (), source)[0]


def patch_embed_to_torch(params):
    return state_dict_from_named(params, patch_embed_name)


def image_tower_name(path):
    """A path of our ImageTower → (timm VisionTransformer key as open_clip's `visual.trunk.*` holds it, rule)."""

    path = tuple(str(p) for p in path)
    top, rest = path[0], path[1:]
    if top == "patch_embed":
        if rest[0] == "proj":  # the stock RGB convolution
            return ("patch_embed.proj." + ("weight" if rest[-1] == "kernel" else "bias"),
                    "conv" if rest[-1] == "kernel" else "copy")
        key, rule = patch_embed_name(rest)
        return "patch_embed." + key, rule
    if top == "blocks":
        key, rule = vit_block_rule(rest[1:])
        return f"blocks.{rest[0]}.{key}", rule
    if top == "attn_pool" and rest == ("latent",):
        return "attn_pool.latent", "copy"
    return generic_rule(path)


def image_tower_from_open_clip(state_dict, target, prefix="visual.trunk.", source="open_clip visual"):
    """The `prefix` part of an open_clip (or DOFA-CLIP) state_dict → our ImageTower params like `target`."""
    sub = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return params_from_named(sub, target, image_tower_name, (), source)[0]


def image_tower_params(path, cfg, target):
    """An open_clip checkpoint (its `visual.trunk.*`) or a timm VisionTransformer checkpoint (no prefix: SigLIP,
    DINOv2 with registers, ViT AugReg) at `path` → ImageTower params like `target` (cfg: its ImageTowerConfig).
    Position embeddings of another grid (DINOv2's 37 × 37 at 518 px for a 378 px teacher) are resampled as timm does
    when it builds the model at that size (`timm.layers.resample_abs_pos_embed`, bicubic)."""
    import numpy as np

    from geolink_jax.convert.files import load_weights

    sd, _ = load_weights(path)
    prefix = "visual.trunk." if any(k.startswith("visual.trunk.") for k in sd) else ""
    key = prefix + "pos_embed"
    if key in sd and tuple(np.shape(sd[key])) != tuple(target["pos_embed"].shape):
        import torch
        from timm.layers import resample_abs_pos_embed

        extra = 0 if cfg.no_embed_class else cfg.prefix_tokens
        sd[key] = resample_abs_pos_embed(torch.from_numpy(np.asarray(sd[key], np.float32)), [cfg.grid, cfg.grid],
                                         num_prefix_tokens=extra, verbose=False).numpy()
    return image_tower_from_open_clip(sd, target, prefix, str(path))


def load_image_tower(tower, path):
    """`image_tower_params` into the ImageTower `tower`, in place (the teacher-cache job)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    state = nnx.state(tower, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, image_tower_params(path, tower.cfg,
                                                                                 nnx.to_pure_dict(state))))
    nnx.update(tower, state)
    return tower


def image_tower_to_open_clip(params, prefix="visual.trunk."):
    return {prefix + k: v for k, v in state_dict_from_named(params, image_tower_name).items()}


def text_tower_name(path):
    """A path of our TextTower → (open_clip TextTransformer key, rule)."""

    path = tuple(str(p) for p in path)
    top, rest = path[0], path[1:]
    if top in ("token_embedding",):
        return "token_embedding.weight", "copy"
    if top == "positional_embedding":
        return "positional_embedding", "copy"
    if top == "blocks":
        pre = f"transformer.resblocks.{rest[0]}."
        part, sub = rest[1], rest[2:]
        if part == "attn":
            key, rule = mha_rule(sub)
            return pre + "attn." + key, rule
        names = {"norm1": "ln_1", "norm2": "ln_2"}
        if part in names:
            key, rule = generic_rule((names[part], *sub))
            return pre + key, rule
        if part == "mlp":
            key, rule = generic_rule(({"fc1": "c_fc", "fc2": "c_proj"}[sub[0]], *sub[1:]))
            return pre + "mlp." + key, rule
    return generic_rule(path)


def translator_name(path):
    """A path of our maka.Translator → (DOFA-CLIP `Translator` key, rule)."""
    path = tuple(str(p) for p in path)
    table = {("norm_scale",): ("norm1.layer_norm.weight", "chw"), ("norm_bias",): ("norm1.layer_norm.bias", "chw"),
             ("conv", "kernel"): ("conv1.weight", "conv"), ("conv", "bias"): ("conv1.bias", "copy")}
    if path in table:
        return table[path]
    head = {"wave_proj": "wave_encoder.proj", "prompt_fc": "norm1.modality_prompt_fc"}[path[0]]
    return generic_rule((head, *path[1:]))


def model_name(path):
    """A path of our DOFACLIP → (DOFA-CLIP / open_clip CustomTextCLIP key, rule). Online teachers have no key (they
    are not part of the student's checkpoint): None."""
    path = tuple(str(p) for p in path)
    top, rest = path[0], path[1:]
    if top == "image":
        key, rule = image_tower_name(rest)
        return "visual.trunk." + key, rule
    if top == "text":
        key, rule = text_tower_name(rest)
        return "text." + key, rule
    if top in ("logit_scale", "logit_bias"):
        return top, "copy"
    if top == "translators":
        key, rule = translator_name(rest[1:])
        return f"translators.{rest[0]}.{key}", rule
    raise KeyError(path)


def student_params(params):
    """Our params without the online teachers (the part a DOFA-CLIP checkpoint holds)."""
    return {k: v for k, v in params.items() if k != "teachers"}


def params_from_dofa_clip(state_dict, target, source="DOFA-CLIP checkpoint"):
    """A DOFA-CLIP or open_clip (CustomTextCLIP, SigLIP) state_dict → our params like `target`; strict key coverage.
    The online teachers of `target` are kept as they are. `module.` prefixes (DDP) are dropped."""
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    student = student_params(target)
    params, used = params_from_named(sd, student, model_name, (), source)
    if "teachers" in target:
        params["teachers"] = target["teachers"]
    return params, dict(converted=len(used))


def dofa_clip_state_dict(params):
    return state_dict_from_named(student_params(params), model_name)
