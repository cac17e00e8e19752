"""The image branch of a masked-autoencoder model (`nn.mae.ImageMAE` and the models built on it: `img_encoder`,
`cls_token`, `img_norm`) ↔ a timm VisionTransformer state_dict (num_classes=0, global_pool=''), both ways."""

import numpy as np
from flax import traverse_util

from geolink_jax.convert.rules import ConversionError, generic_rule, params_from_named, to_source, vit_block_rule, vote
from geolink_jax.nn import pos_embed

IMAGE_BRANCH = ("img_encoder", "cls_token", "img_norm")


def image_name(path):
    """One parameter path of the image branch → (key in our torch-style naming, rule): `img_encoder.patch_embed.*`
    and `img_encoder.blocks.<i>.*` (timm's names under an `img_encoder.` prefix), everything else by the generic
    rule."""
    path = tuple(str(p) for p in path)
    if path[0] == "img_encoder":
        if path[1] == "patch_embed":
            kernel = path[-1] == "kernel"
            return "img_encoder.patch_embed.proj." + ("weight" if kernel else "bias"), ("conv" if kernel else "copy")
        suffix, rule = vit_block_rule(path[3:])
        return f"img_encoder.blocks.{path[2]}.{suffix}", rule
    return generic_rule(path)


def timm_state_dict(params, cfg):
    """The image branch as a timm VisionTransformer state_dict (num_classes=0, global_pool=''): patch_embed,
    blocks, cls_token, pos_embed (the fixed sin-cos table, cls row zero) and norm (our img_norm, eps 1e-5 vs timm's
    1e-6: a 1e-5-relative difference, as in the official unimodal GeoLink release)."""
    sd = {}
    for path, value in traverse_util.flatten_dict({k: params[k] for k in IMAGE_BRANCH}).items():
        key, rule = image_name(path)
        key = key.removeprefix("img_encoder.")
        sd["norm." + key.removeprefix("img_norm.") if key.startswith("img_norm.") else key] = to_source(
            rule, value, (1, 1, -1))
    v = cfg.vit
    side = v.image_size // v.patch_size
    sd["pos_embed"] = pos_embed.image_table(v.width, side, side)[None].astype(np.float32)
    return sd


def params_from_timm(state_dict, target, source="state_dict"):
    """timm ViT state_dict → the image-branch params {img_encoder, cls_token, img_norm} shaped like those subtrees
    of `target`. pos_embed must be the fixed sin-cos table the model uses (a learned one cannot be represented):
    its max deviation is reported and an error above 1e-4."""
    sub = {k: target[k] for k in IMAGE_BRANCH}
    renamed = {}
    for k, v in state_dict.items():
        if k.startswith(("blocks.", "patch_embed.")):
            k = "img_encoder." + k
        elif k.startswith("norm."):
            k = "img_" + k  # timm's final norm holds our img_norm
        renamed[k] = v
    pos = renamed.pop("pos_embed", None)
    params, used = params_from_named(renamed, sub, image_name, source=source)
    report = dict(converted=len(used))
    if pos is not None:
        tokens = np.asarray(pos).shape[1] - 1
        side = int(round(tokens ** 0.5))
        table = pos_embed.image_table(np.asarray(pos).shape[-1], side, side)
        dev = float(np.abs(np.asarray(pos, np.float32)[0] - table).max())
        report["pos_embed_max_abs_diff"] = dev
        if dev > 1e-4:
            raise ConversionError(f"{source}: pos_embed is not the fixed sin-cos table the model uses (max |diff| "
                                  f"{dev:.3g}); a learned position embedding cannot be imported")
    return params, report


def timm_into_fresh_model(state_dict, model, source="state_dict"):
    """A timm ViT state_dict into a freshly initialised module with this image branch: the encoder from the file,
    every other parameter its fresh initialisation. Returns (params as nested numpy dicts, report)."""
    from flax import nnx

    target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    image, report = params_from_timm(state_dict, target, source=source)
    return {**target, **image}, report


def infer_vit(state_dict, num_heads=None):
    """ViTConfig from the shapes of a timm ViT state_dict, or of a state_dict holding the image branch under an
    `img_encoder.` prefix (the official GeoLink layout), each dimension by majority over the tensors that carry it
    (`rules.vote`). Head counts are not visible in the weights: the timm preset of that width/depth, else
    width // 64, unless `num_heads` is given."""
    from geolink_jax.nn.vit import VIT_PRESETS, ViTConfig

    prefix = "img_encoder." if "img_encoder.patch_embed.proj.weight" in state_dict else ""
    _, channels, patch, _ = np.shape(state_dict[prefix + "patch_embed.proj.weight"])
    width = vote(state_dict, [(prefix + "patch_embed.proj.*", 0), (prefix + "blocks.*.norm?.*", 0),
                              ("cls_token", 2), ("img_norm.*", 0), (prefix + "norm.*", 0)])
    depth = len({k.split(".")[len(prefix.split("."))] for k in state_dict if k.startswith(prefix + "blocks.")})
    pos = state_dict.get("img_pos_embed", state_dict.get("pos_embed"))
    image_size = int(round((np.shape(pos)[1] - 1) ** 0.5)) * patch if pos is not None else 224
    preset = next((v for v in VIT_PRESETS.values() if (v.width, v.depth) == (width, depth)), None)
    heads = num_heads or (preset.num_heads if preset else width // 64)
    return ViTConfig(int(width), depth, int(heads), patch_size=int(patch), image_size=image_size,
                     in_channels=int(channels))


def head_arguments(p):
    """`convert import` flags for weights without a recorded config: the encoder's head count."""
    p.add_argument("--heads", type=int, default=None,
                   help="import without recorded config: encoder attention heads (default: the timm preset of that "
                        "width/depth)")


def export_metadata(cfg):
    """What an exported timm file records: the timm architecture name of the encoder's size, if it has one."""
    from geolink_jax.nn.vit import VIT_PRESETS

    arch = {"B": "vit_base", "L": "vit_large", "H": "vit_huge", "S": "vit_small", "Ti": "vit_tiny"}
    name = next((f"{arch[k]}_patch{cfg.vit.patch_size}_{cfg.vit.image_size}"
                 for k, v in VIT_PRESETS.items() if (v.width, v.depth) == (cfg.vit.width, cfg.vit.depth)), None)
    return dict(architecture=name, num_classes=0, global_pool="", pos_embed_requires_grad=False)
