"""DOFA-CLIP weights ↔ ours. This part: the dynamic patch embedding in torchgeo's `DOFAEmbedding` layout, which
DOFA-CLIP's `dofa_patch_embed.py` shares (fclayer.w1/w2, weight_generator.{transformer_encoder.layers.0.*,
fc_weight, fc_bias, weight_tokens, bias_token}); rules as convert/official.py."""

from geolink_jax.convert.official import _generic, params_from_named
from geolink_jax.gair.convert import state_dict_from_named


def patch_embed_name(path):
    """A path of our DynamicPatchEmbed → (DOFAEmbedding key, rule)."""
    path = tuple(str(p) for p in path)
    top, rest = path[0], path[1:]
    if top in ("fc1", "fc2"):
        return _generic(("fclayer", "w" + top[-1], *rest))
    if top in ("weight_tokens", "bias_token"):
        return f"weight_generator.{top}", "copy"
    if top in ("fc_weight", "fc_bias"):
        return _generic(("weight_generator", top, *rest))
    pre = "weight_generator.transformer_encoder.layers.0."
    if rest[0] == "self_attn":  # torch MultiheadAttention: packed in_proj, out_proj
        return {("in_proj", "kernel"): (pre + "self_attn.in_proj_weight", "qkv"),
                ("in_proj", "bias"): (pre + "self_attn.in_proj_bias", "qkv"),
                ("out_proj", "kernel"): (pre + "self_attn.out_proj.weight", "proj"),
                ("out_proj", "bias"): (pre + "self_attn.out_proj.bias", "copy")}[rest[1:]]
    key, rule = _generic(rest)
    return pre + key, rule


def patch_embed_from_torch(state_dict, target, source="DOFAEmbedding"):
    return params_from_named(state_dict, target, patch_embed_name, (), source)[0]


def patch_embed_to_torch(params):
    return state_dict_from_named(params, patch_embed_name)
