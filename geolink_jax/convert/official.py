"""Weights between geolink_jax and the official PyTorch release (spec §3.11): the multimodal GeoLink state_dict and
the unimodal timm ViT checkpoint, both ways.

Every geolink_jax parameter has exactly one source key and one rule (see `geolink.PARAMETER_NAMES`):

    copy    same array                              cls_token, mask tokens, biases
    norm    LayerNorm weight → scale                 (PyG graph LayerNorm too)
    linear  Linear weight [out, in] → kernel [in, out]
    qkv     packed q/k/v weight [3E, E] → in_proj.kernel [E, 3, H, Dh]; bias [3E] → [3, H, Dh]   (timm qkv, torch
            MultiheadAttention in_proj_weight: rows q, k, v)
    proj    attention output weight [E, E] → out_proj.kernel [H, Dh, E]
    conv    patch Conv2d weight [D, C, p, p] → kernel [p, p, C, D]
    att     PyG GATConv att_src/att_dst [1, 1, C] → [C]
    lstm    LSTM weight_ih_l0/weight_hh_l0 [4H, in] → [in, 4H] (gate order i, f, g, o kept; both biases kept)

Source keys that GeoLink does not use are listed in `OFFICIAL_UNUSED` (the fixed sin-cos tables it recomputes,
timm's own cls/pos/norm, and the duplicate registration of the patch embedding); any other key left over is an
error, as is a missing key or a shape mismatch, each naming the key.
"""

import numpy as np
from flax import traverse_util

from geolink_jax.models import pos_embed
from geolink_jax.osm import RELATION_NAMES, RELATIONS

# Present in the official multimodal state_dict, deliberately not imported.
OFFICIAL_UNUSED = (
    "img_pos_embed", "rec_img_pos_embed", "fusion_img_pos_embed",  # fixed sin-cos tables (recomputed)
    "img_encoder.cls_token", "img_encoder.pos_embed", "img_encoder.norm.weight", "img_encoder.norm.bias",  # timm's
    "patch_embed.proj.weight", "patch_embed.proj.bias",  # the same tensor as img_encoder.patch_embed.proj.*
)
# Present in a timm ViT (num_classes=0, global_pool='') state_dict, not part of GeoLink's image encoder.
TIMM_UNUSED = ("pos_embed",)


class ConversionError(ValueError):
    pass


# ------------------------------------------------------------------ the rules, both directions
def _to_ours(rule, x, shape):
    x = np.array(x, np.float32, copy=True)  # never alias the source's buffers (torch tensors mutate in place)
    if rule in ("copy", "norm"):
        out = x
    elif rule in ("linear", "lstm"):
        out = x.T
    elif rule == "qkv":
        out = x.T.reshape(shape) if x.ndim == 2 else x.reshape(shape)
    elif rule == "proj":
        out = x.T.reshape(shape)
    elif rule == "conv":
        out = x.transpose(2, 3, 1, 0)
    elif rule == "att":
        out = x.reshape(shape)
    elif rule == "chw":  # a [C, H, W] per-position map (torch) ↔ [H, W, C] (ours)
        out = x.transpose(1, 2, 0)
    else:
        raise AssertionError(rule)
    return out


def _to_official(rule, x, source_shape):
    x = np.asarray(x, np.float32)
    if rule in ("copy", "norm"):
        return x
    if rule in ("linear", "lstm"):
        return x.T
    if rule == "qkv":
        return x.reshape(x.shape[0], -1).T if x.ndim == 4 else x.reshape(-1)
    if rule == "proj":
        return x.reshape(-1, x.shape[-1]).T
    if rule == "conv":
        return x.transpose(3, 2, 0, 1)
    if rule == "att":
        return x.reshape(source_shape)
    if rule == "chw":
        return x.transpose(2, 0, 1)
    raise AssertionError(rule)


def _vit_block_rule(rest):
    """Path inside one timm Block (ours) → (timm suffix, rule)."""
    name = ".".join(rest)
    table = {
        "attn.in_proj.kernel": ("attn.qkv.weight", "qkv"), "attn.in_proj.bias": ("attn.qkv.bias", "qkv"),
        "attn.out_proj.kernel": ("attn.proj.weight", "proj"), "attn.out_proj.bias": ("attn.proj.bias", "copy"),
    }
    if name in table:
        return table[name]
    return _generic(rest)


def _mha_rule(rest):
    """Path inside a torch nn.MultiheadAttention (ours) → (torch suffix, rule)."""
    return {("in_proj", "kernel"): ("in_proj_weight", "qkv"), ("in_proj", "bias"): ("in_proj_bias", "qkv"),
            ("out_proj", "kernel"): ("out_proj.weight", "proj"), ("out_proj", "bias"): ("out_proj.bias", "copy")}[
        tuple(rest)]


def _generic(path):
    *head, leaf = path
    if leaf == "kernel":
        return ".".join([*head, "weight"]), "linear"
    if leaf == "scale":
        return ".".join([*head, "weight"]), "norm"
    return ".".join(path), "copy"


def official_name(path, hetero_key="<{s}___to___{d}>"):
    """One geolink_jax parameter path (tuple of str/int) → (official state_dict key, rule)."""
    path = tuple(str(p) for p in path)
    top = path[0]
    if top == "img_encoder":
        if path[1] == "patch_embed":
            return "img_encoder.patch_embed.proj." + ("weight" if path[-1] == "kernel" else "bias"), (
                "conv" if path[-1] == "kernel" else "copy")
        suffix, rule = _vit_block_rule(path[3:])
        return f"img_encoder.blocks.{path[2]}.{suffix}", rule
    if top == "img_cross_modal_decoder":
        suffix, rule = _vit_block_rule(path[2:])
        return f"img_cross_modal_decoder.{path[1]}.{suffix}", rule
    if top == "osm_cross_modal_encoder" and path[2] in ("self_attn", "cross_attn_token_to_image",
                                                          "cross_attn_image_to_token"):
        suffix, rule = _mha_rule(path[3:])
        return f"osm_cross_modal_encoder.{path[1]}.{path[2]}.{suffix}", rule
    if top == "osm_encoder":
        src, dst = dict(zip(RELATION_NAMES, RELATIONS))[path[2]]
        prefix = "osm_encoder.convs.0.convs." + hetero_key.format(s=src, d=dst)
        if path[3] in ("att_src", "att_dst"):
            return f"{prefix}.{path[3]}", "att"
        if path[3] == "lin":
            return f"{prefix}.lin.weight", "linear"
        return f"{prefix}.{path[3]}", "copy"
    if top == "osm_read_out":
        leaf = path[-1]
        return f"osm_read_out.{path[1]}.lstm.{leaf}_l0", "lstm" if leaf.startswith("weight") else "copy"
    return _generic(path)


def _hetero_key_format(state_dict):
    """PyG ≥ 2.4 writes HeteroConv keys as '<src___to___dst>', older releases as 'src__to__dst'."""
    if any("convs.0.convs.<" in k for k in state_dict):
        return "<{s}___to___{d}>"
    return "{s}__to__{d}"


# ------------------------------------------------------------------ multimodal
def params_from_named(state_dict, target, name_fn, unused=(), source="state_dict"):
    """A state_dict {key: array} → params shaped like `target` (a nested dict of arrays or ShapeDtypeStructs), each
    path mapped by `name_fn(path) -> (key, rule)`; a key may be a tuple of keys whose arrays are concatenated along
    axis 0 (separate q, k, v weights read as one packed qkv). Strict: a missing key, a wrong shape or a key left over
    that is not in `unused` is a ConversionError naming it. Returns (params, the keys converted)."""
    tried, out, problems = set(), [], []
    for path, leaf in traverse_util.flatten_dict(target).items():
        key, rule = name_fn(path)
        keys = key if isinstance(key, tuple) else (key,)
        missing = [k for k in keys if k not in state_dict]
        if missing:
            problems += [f"missing key {k!r} (for {'.'.join(map(str, path))})" for k in missing]
            continue
        tried.update(keys)  # reported once, as wrong-shaped, not again as unused
        raw = (np.concatenate([np.asarray(state_dict[k], np.float32) for k in keys]) if len(keys) > 1
               else state_dict[key])
        # the shape this key must have in the file, in the file's layout
        expected = np.shape(_to_official(rule, np.zeros(leaf.shape, np.float32), (1, 1, -1)))
        try:
            value = _to_ours(rule, raw, tuple(leaf.shape))
        except ValueError:
            value = None
        if value is None or value.shape != tuple(leaf.shape):
            problems.append(f"{'+'.join(keys)}: shape {tuple(np.shape(raw))}, expected {tuple(expected)} "
                            f"(for {'.'.join(map(str, path))})")
            continue
        out.append((path, value))
    leftover = sorted(set(state_dict) - tried - set(unused))
    problems += [f"unused key {k!r} {tuple(np.shape(state_dict[k]))}" for k in leftover]
    if problems:
        raise ConversionError(f"{source}: " + "; ".join(problems))
    return traverse_util.unflatten_dict(dict(out)), tried


def params_from_official(state_dict, target, source="state_dict"):
    """Official GeoLink state_dict {key: array} → geolink_jax params shaped like `target` (a nested dict of
    arrays or ShapeDtypeStructs, e.g. nnx.to_pure_dict of the model's Params). Returns (params, report)."""
    fmt = _hetero_key_format(state_dict)
    params, used = params_from_named(state_dict, target, lambda path: official_name(path, fmt), OFFICIAL_UNUSED,
                                     source)
    dup = [k for k in ("patch_embed.proj.weight", "patch_embed.proj.bias") if k in state_dict]
    for k in dup:  # registered twice in the reference: must be the very same values
        if not np.array_equal(np.asarray(state_dict[k]), np.asarray(state_dict["img_encoder." + k])):
            raise ConversionError(f"{source}: {k} differs from img_encoder.{k}")
    report = dict(converted=len(used), unused_listed=sorted(set(OFFICIAL_UNUSED) & set(state_dict)),
                  hetero_key_format=fmt)
    return params, report


def official_state_dict(params, cfg, hetero_key="<{s}___to___{d}>"):
    """geolink_jax params (nested dict) → the official GeoLink state_dict {key: float32 array}, including the keys
    the official module registers but GeoLink does not train (sin-cos tables; timm's cls/pos/norm as copies of
    cls_token/img_pos_embed/img_norm, as the released checkpoints were made)."""
    sd = {}
    for path, value in traverse_util.flatten_dict(params).items():
        key, rule = official_name(path, hetero_key)
        sd[key] = _to_official(rule, value, (1, 1, -1))
    v, p = cfg.vit, cfg.vit.patch_size
    grid = (v.image_size // p, v.image_size // p)
    sd["img_pos_embed"] = pos_embed.image_table(v.width, *grid)[None].astype(np.float32)
    sd["rec_img_pos_embed"] = pos_embed.image_table(cfg.decoder_width, *grid)[None].astype(np.float32)
    if hasattr(cfg, "fusion_dim"):  # GeoLink (an image-only MAE has no fusion block)
        sd["fusion_img_pos_embed"] = pos_embed.image_table(cfg.fusion_dim, *grid)[None].astype(np.float32)
    sd["img_encoder.cls_token"] = sd["cls_token"]
    sd["img_encoder.pos_embed"] = sd["img_pos_embed"]
    sd["img_encoder.norm.weight"], sd["img_encoder.norm.bias"] = sd["img_norm.weight"], sd["img_norm.bias"]
    sd["patch_embed.proj.weight"] = sd["img_encoder.patch_embed.proj.weight"]
    sd["patch_embed.proj.bias"] = sd["img_encoder.patch_embed.proj.bias"]
    return sd


# ------------------------------------------------------------------ unimodal (timm ViT)
def timm_state_dict(params, cfg):
    """The image branch as a timm VisionTransformer state_dict (num_classes=0, global_pool=''): patch_embed,
    blocks, cls_token (GeoLink's), pos_embed (the fixed sin-cos table, cls row zero) and norm (GeoLink's img_norm,
    eps 1e-5 in GeoLink vs timm's 1e-6: a 1e-5-relative difference, as in the official unimodal release)."""
    full = official_state_dict({k: params[k] for k in ("img_encoder", "cls_token", "img_norm")}, cfg)
    sd = {k.removeprefix("img_encoder."): v for k, v in full.items() if k.startswith("img_encoder.")}
    sd["cls_token"] = full["cls_token"]
    sd["pos_embed"] = full["img_pos_embed"]
    sd["norm.weight"], sd["norm.bias"] = full["img_norm.weight"], full["img_norm.bias"]
    return sd


def params_from_timm(state_dict, target, source="state_dict"):
    """timm ViT state_dict → the image-branch params {img_encoder, cls_token, img_norm} shaped like those subtrees
    of `target`. pos_embed must be the fixed sin-cos table GeoLink uses (a learned one cannot be represented):
    its max deviation is reported and an error above 1e-4."""
    sub = {k: target[k] for k in ("img_encoder", "cls_token", "img_norm")}
    renamed = {}
    for k, v in state_dict.items():
        if k.startswith(("blocks.", "patch_embed.")):
            k = "img_encoder." + k
        elif k.startswith("norm."):
            k = "img_" + k  # timm's final norm holds GeoLink's img_norm
        renamed[k] = v
    pos = renamed.pop("pos_embed", None)
    params, report = params_from_official(renamed, sub, source)
    if pos is not None:
        tokens = np.asarray(pos).shape[1] - 1
        side = int(round(tokens ** 0.5))
        table = pos_embed.image_table(np.asarray(pos).shape[-1], side, side)
        dev = float(np.abs(np.asarray(pos, np.float32)[0] - table).max())
        report["pos_embed_max_abs_diff"] = dev
        if dev > 1e-4:
            raise ConversionError(f"{source}: pos_embed is not GeoLink's fixed sin-cos table (max |diff| {dev:.3g}); "
                                  "a learned position embedding cannot be imported")
    return params, report


def timm_into_fresh_model(state_dict, model, source="state_dict"):
    """A timm ViT state_dict into a freshly initialised module of any family with GeoLink's image branch
    (`ImageMAE` and its subclasses): the encoder from the file, every other parameter its fresh initialisation.
    Returns (params as nested numpy dicts, report)."""
    from flax import nnx

    target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    image, report = params_from_timm(state_dict, target, source=source)
    return {**target, **image}, report


def _vote(state_dict, sources):
    """The value most tensors agree on for one config field: `sources` are (fnmatch pattern, axis) pairs naming
    every tensor whose shape carries the field. A majority rather than the first match, so that one wrong-shaped
    tensor is blamed by the conversion instead of every correct tensor that shares its dimension."""
    import collections
    import fnmatch

    votes = collections.Counter(np.shape(v)[axis] for pattern, axis in sources
                                for k, v in state_dict.items() if fnmatch.fnmatchcase(k, pattern)
                                and len(np.shape(v)) > axis)
    return int(votes.most_common(1)[0][0])


def infer_config(state_dict, num_heads=None, decoder_heads=16, fusion_heads=16):
    """GeoLinkConfig from the shapes of an official (or timm) state_dict, each dimension by majority over the
    tensors that carry it (`_vote`). Head counts are not visible in the weights: the encoder's defaults to the timm
    preset of that width/depth (else width // 64); the decoder's and the fusion block's to the reference's 16."""
    from geolink_jax.models import VIT_PRESETS, GeoLinkConfig, ViTConfig

    prefix = "img_encoder." if "img_encoder.patch_embed.proj.weight" in state_dict else ""
    _, channels, patch, _ = np.shape(state_dict[prefix + "patch_embed.proj.weight"])
    width = _vote(state_dict, [(prefix + "patch_embed.proj.*", 0), (prefix + "blocks.*.norm?.*", 0),
                               ("cls_token", 2), ("img_norm.*", 0), (prefix + "norm.*", 0)])
    depth = len({k.split(".")[len(prefix.split(".")) ] for k in state_dict if k.startswith(prefix + "blocks.")})
    pos = state_dict.get("img_pos_embed", state_dict.get("pos_embed"))
    image_size = int(round((np.shape(pos)[1] - 1) ** 0.5)) * patch if pos is not None else 224
    preset = next((v for v in VIT_PRESETS.values() if (v.width, v.depth) == (width, depth)), None)
    heads = num_heads or (preset.num_heads if preset else width // 64)
    vit = ViTConfig(int(width), depth, int(heads), patch_size=int(patch), image_size=image_size,
                    in_channels=int(channels))
    if prefix == "":  # timm: the image encoder only
        return GeoLinkConfig(vit=vit)
    vote = lambda *sources: _vote(state_dict, sources)  # noqa: E731
    return GeoLinkConfig(
        vit=vit,
        osm_in_features=vote(("*.lin.weight", 1), ("osm_mask_token.*", 1), ("osm_node_pred.*", 0)),
        osm_hidden=vote(("*.lin.weight", 0), ("osm_encoder.*.att_src", 2), ("osm_encoder.*.att_dst", 2)),
        graph_embed_dim=vote(("osm_aggr_mlp.*", 0)),
        fusion_dim=vote(("img_fusion_mlp.*", 0), ("osm_cross_modal_encoder.*.norm?.*", 0)),
        decoder_width=vote(("img_decoder_mlp.*", 0), ("img_decoder_norm.*", 0),
                           ("img_cross_modal_decoder.*.norm?.*", 0)),
        decoder_depth=len({k.split(".")[1] for k in state_dict if k.startswith("img_cross_modal_decoder.")}),
        decoder_heads=decoder_heads,
        contrastive_dim=vote(("img_consistency_prj.*", 0), ("osm_graph_consistency_prj.*", 0)),
        fusion_depth=len({k.split(".")[1] for k in state_dict if k.startswith("osm_cross_modal_encoder.")}),
        fusion_heads=fusion_heads)
