"""Parameter count of a GeoLink (or MAE) model by module, compared with the reference's (spec §3.1).

    python -m geolink_jax.geolink.param_count [--vit L] [--family geolink|mae]

Shapes come from `nnx.eval_shape`, so even ViT-H costs no memory.
"""

import argparse
import math

import jax
from flax import traverse_util

from geolink_jax import family as family_lib
from geolink_jax.geolink.model import GeoLinkConfig
from geolink_jax.nn.mae import MAEConfig
from geolink_jax.nn.vit import VIT_PRESETS


def count_by_module(cfg):
    """{top-level submodule name: parameter count} for the model of any family built from cfg (abstractly)."""
    counts = {}
    for path, leaf in traverse_util.flatten_dict(family_lib.abstract_params(family_lib.family_of(cfg), cfg)).items():
        counts[path[0]] = counts.get(path[0], 0) + math.prod(leaf.shape)
    return counts


def timm_extras(cfg):
    """Parameters a timm VisionTransformer(num_classes=0) holds that GeoLink does not use: cls_token,
    pos_embed [1, 1+L, D] and the final norm."""
    v = cfg.vit
    return {"timm cls_token": v.width, "timm pos_embed": (1 + v.num_patches) * v.width, "timm norm": 2 * v.width}


def fixed_tables(cfg):
    """The reference's frozen sin-cos tables, stored as (requires_grad=False) parameters there and recomputed here."""
    n = 1 + cfg.vit.num_patches
    tables = {"img_pos_embed": n * cfg.vit.width, "rec_img_pos_embed": n * cfg.decoder_width}
    if hasattr(cfg, "fusion_dim"):
        tables["fusion_img_pos_embed"] = n * cfg.fusion_dim
    return tables


def report(cfg):
    counts = count_by_module(cfg)
    encoder = counts["img_encoder"]
    specific = sum(c for k, c in counts.items() if k != "img_encoder")
    extras = timm_extras(cfg)
    tables = fixed_tables(cfg)
    listed = lambda d: ", ".join(f"{k} {v:,}" for k, v in d.items())
    lines = [f"{'module':32s} {'parameters':>14s}"]
    for k in sorted(counts, key=lambda k: -counts[k]):
        lines.append(f"{k:32s} {counts[k]:14,d}")
    lines += [
        "",
        f"{'ViT encoder (patch_embed+blocks)':32s} {encoder:14,d}",
        f"{'  + timm-only cls/pos/norm':32s} {sum(extras.values()):14,d}  ({listed(extras)})",
        f"{'  = timm ViT (num_classes=0)':32s} {encoder + sum(extras.values()):14,d}",
        f"{'beyond the encoder':32s} {specific:14,d}",
        f"{'frozen sin-cos tables (not params)':32s} {sum(tables.values()):14,d}  ({listed(tables)})",
        f"{'total trainable':32s} {encoder + specific:14,d}",
    ]
    return "\n".join(lines), dict(encoder=encoder, specific=specific, timm=encoder + sum(extras.values()),
                                  tables=sum(tables.values()), by_module=counts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vit", default="L", choices=sorted(VIT_PRESETS))
    parser.add_argument("--family", default="geolink", choices=("geolink", "mae"))
    args = parser.parse_args(argv)
    cfg = (GeoLinkConfig if args.family == "geolink" else MAEConfig)(vit=VIT_PRESETS[args.vit])
    text, _ = report(cfg)
    print(f"{args.family} ViT-{args.vit}/{cfg.vit.patch_size} @ {cfg.vit.image_size}px, jax {jax.__version__}")
    print(text)


if __name__ == "__main__":
    main()
