"""Weights between geolink_jax and the official PyTorch release (spec §3.11): the multimodal GeoLink state_dict and
the unimodal timm ViT checkpoint, both ways.

Every geolink_jax parameter has exactly one source key and one rule (`convert.rules`; see
`geolink.model.PARAMETER_NAMES`); the image branch is named as in `convert.timm`.

Source keys that GeoLink does not use are listed in `OFFICIAL_UNUSED` (the fixed sin-cos tables it recomputes,
timm's own cls/pos/norm, and the duplicate registration of the patch embedding); any other key left over is an
error, as is a missing key or a shape mismatch, each naming the key.
"""

import numpy as np
from flax import traverse_util

from geolink_jax.convert import rules
from geolink_jax.convert import timm as convert_timm
from geolink_jax.convert.rules import ConversionError  # noqa: F401  (re-exported: the family's converters raise it)
from geolink_jax.convert.timm import params_from_timm, timm_into_fresh_model, timm_state_dict  # noqa: F401
from geolink_jax.nn import pos_embed
from geolink_jax.osm import RELATION_NAMES, RELATIONS

# Present in the official multimodal state_dict, deliberately not imported.
OFFICIAL_UNUSED = (
    "img_pos_embed", "rec_img_pos_embed", "fusion_img_pos_embed",  # fixed sin-cos tables (recomputed)
    "img_encoder.cls_token", "img_encoder.pos_embed", "img_encoder.norm.weight", "img_encoder.norm.bias",  # timm's
    "patch_embed.proj.weight", "patch_embed.proj.bias",  # the same tensor as img_encoder.patch_embed.proj.*
)


def official_name(path, hetero_key="<{s}___to___{d}>"):
    """One geolink_jax parameter path (tuple of str/int) → (official state_dict key, rule)."""
    path = tuple(str(p) for p in path)
    top = path[0]
    if top == "img_encoder":
        return convert_timm.image_name(path)
    if top == "img_cross_modal_decoder":
        suffix, rule = rules.vit_block_rule(path[2:])
        return f"img_cross_modal_decoder.{path[1]}.{suffix}", rule
    if top == "osm_cross_modal_encoder" and path[2] in ("self_attn", "cross_attn_token_to_image",
                                                          "cross_attn_image_to_token"):
        suffix, rule = rules.mha_rule(path[3:])
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
    return rules.generic_rule(path)


def _hetero_key_format(state_dict):
    """PyG ≥ 2.4 writes HeteroConv keys as '<src___to___dst>', older releases as 'src__to__dst'."""
    if any("convs.0.convs.<" in k for k in state_dict):
        return "<{s}___to___{d}>"
    return "{s}__to__{d}"


# ------------------------------------------------------------------ multimodal
def params_from_official(state_dict, target, source="state_dict"):
    """Official GeoLink state_dict {key: array} → geolink_jax params shaped like `target` (a nested dict of
    arrays or ShapeDtypeStructs, e.g. nnx.to_pure_dict of the model's Params). Returns (params, report)."""
    fmt = _hetero_key_format(state_dict)
    params, used = rules.params_from_named(state_dict, target, lambda path: official_name(path, fmt), OFFICIAL_UNUSED,
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
        sd[key] = rules.to_source(rule, value, (1, 1, -1))
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


def infer_config(state_dict, num_heads=None, decoder_heads=16, fusion_heads=16):
    """GeoLinkConfig from the shapes of an official (or timm) state_dict, each dimension by majority over the
    tensors that carry it (`rules.vote`). Head counts are not visible in the weights: the encoder's defaults to the timm
    preset of that width/depth (else width // 64); the decoder's and the fusion block's to the reference's 16."""
    from geolink_jax.geolink.model import GeoLinkConfig

    vit = convert_timm.infer_vit(state_dict, num_heads)
    if "img_encoder.patch_embed.proj.weight" not in state_dict:  # timm: the image encoder only
        return GeoLinkConfig(vit=vit)
    vote = lambda *sources: rules.vote(state_dict, sources)  # noqa: E731
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
