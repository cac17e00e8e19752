"""GAIR weights: the official checkpoint layout (`checkpoint.pth`: the research model's state_dict, under `model`,
keys possibly prefixed `module.`) ↔ ours, plus the layouts of the independent implementations each encoder matches:
torchgeo's CROMA `ViT` (RS), Hugging Face `ViTModel` (SV) and geoclip's `LocationEncoder`.

Names (ours → GAIR checkpoint):
  rs_encoder.*        rs_encoder.s2_encoder.*  (CROMA: linear_input, transformer.layers.{i}.0.{input_norm, to_qkv,
                      to_out}, .1.{input_norm, net.0, net.3}, transformer.norm_out); teacher_rs → rs_encoder_teacher
  sv_encoder.*        sv_encoder.* as HF ViTModel (embeddings.*, encoder.layer.{i}.*, layernorm, pooler.dense);
                      teacher_sv → sv_encoder_teacher
  location_encoder.branches.{i}.b, .mlp.{j}, .head   location_encoder.LocEnc{i}.capsule.0.b, .capsule.{2j+1}, .head.0
  imnet, sv_proj      imnet, optical_proj
Rules as in convert/official.py (Linear weights transposed, q/k/v packed per head, the patch conv to HWIO). The
checkpoint's location queue (`queue_for_location` [2, K], `queue_ptr_location`) is read into the model state.
Keys the released model holds but never uses in its loss or embeddings are listed in `GAIR_UNUSED`; any other key
left over is an error.
"""

import re

import numpy as np

from geolink_jax.convert.rules import ConversionError, generic_rule, params_from_named, state_dict_from_named

GAIR_UNUSED_PREFIXES = (
    "radar_proj.", "location_proj.", "nerf_fn.", "rs_student_projector.", "sv_student_projector.",
    "ContrastLoss.", "rs_encoder.layer_norm.", "rs_encoder.head.", "rs_encoder_teacher.layer_norm.",
    "rs_encoder_teacher.head.")
GAIR_UNUSED_KEYS = ("logit_scale", "query_feature", "rs_patch_pos_encoding", "queue_for_rs_encoding", "queue_ptr_rs",
                    "queue_for_location", "queue_ptr_location")


def _croma(rest):
    """Path inside our RSEncoder → (CROMA ViT key suffix, rule)."""
    if rest[0] == "linear_input":
        return generic_rule(rest)
    if rest[0] == "norm_out":
        return generic_rule(("transformer", "norm_out", *rest[1:]))
    i, sub, *leaf = rest[1:]
    table = {("norm1",): "0.input_norm", ("norm2",): "1.input_norm", ("mlp", "fc1"): "1.net.0",
             ("mlp", "fc2"): "1.net.3"}
    if sub == "attn":
        kind = {("in_proj", "kernel"): ("0.to_qkv.weight", "qkv"), ("out_proj", "kernel"): ("0.to_out.weight", "proj"),
                ("out_proj", "bias"): ("0.to_out.bias", "copy")}[tuple(leaf)]
        return f"transformer.layers.{i}.{kind[0]}", kind[1]
    for k, v in table.items():
        if (sub, *leaf[:-1]) == k:
            return generic_rule(("transformer", "layers", i, *v.split("."), leaf[-1]))
    raise KeyError(rest)


def _hf_vit(rest):
    """Path inside our SVEncoder → (HF ViTModel key, or a (q, k, v) key tuple, and the rule)."""
    top = rest[0]
    if top == "patch_embed":
        return ("embeddings.patch_embeddings.projection." + ("weight" if rest[-1] == "kernel" else "bias"),
                "conv" if rest[-1] == "kernel" else "copy")
    if top == "cls_token":
        return "embeddings.cls_token", "copy"
    if top == "pos_embed":
        return "embeddings.position_embeddings", "copy"
    if top == "norm":
        return generic_rule(("layernorm", rest[-1]))
    if top == "pooler":
        return generic_rule(("pooler", "dense", rest[-1]))
    i, sub, *leaf = rest[1:]
    pre = f"encoder.layer.{i}."
    if sub == "attn" and leaf[0] == "in_proj":
        name = "weight" if leaf[-1] == "kernel" else "bias"
        return tuple(f"{pre}attention.attention.{q}.{name}" for q in ("query", "key", "value")), "qkv"
    if sub == "attn":
        return (f"{pre}attention.output.dense." + ("weight" if leaf[-1] == "kernel" else "bias"),
                "proj" if leaf[-1] == "kernel" else "copy")
    module = {"norm1": "layernorm_before", "norm2": "layernorm_after", "mlp": None}[sub]
    if module is None:
        module = {"fc1": "intermediate.dense", "fc2": "output.dense"}[leaf[0]]
        leaf = leaf[1:]
    return generic_rule((*pre.rstrip(".").split("."), *module.split("."), *leaf))


_HF5_TO_HF4 = ((r"layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
               (r"layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
               (r"layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
               (r"layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
               (r"layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
               (r"layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
               (r"layers\.(\d+)\.layernorm_", r"encoder.layer.\1.layernorm_"))


def hf_vit_names(state_dict, prefix=""):
    """ViTModel keys as transformers 4 wrote them (GAIR's checkpoint, the Hub's files): transformers 5 renamed
    `encoder.layer.{i}.attention.attention.query` → `layers.{i}.attention.q_proj` and so on; its keys are renamed
    back under `prefix`, other keys are kept."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith(prefix):
            rest = k[len(prefix):]
            for pattern, repl in _HF5_TO_HF4:
                if re.match(pattern, rest):
                    rest = re.sub(pattern, repl, rest, count=1)
                    break
            k = prefix + rest
        out[k] = v
    return out


def _geoclip(rest):
    """Path inside our LocationEncoder → (geoclip key, rule)."""
    _, i, sub, *leaf = rest
    if sub == "b":
        return f"LocEnc{i}.capsule.0.b", "copy"
    if sub == "mlp":
        return generic_rule((f"LocEnc{i}", "capsule", str(2 * int(leaf[0]) + 1), leaf[-1]))
    return generic_rule((f"LocEnc{i}", "head", "0", leaf[-1]))


def gair_name(path):
    """One parameter path of our GAIR module → (GAIR checkpoint key(s), rule)."""
    path = tuple(str(p) for p in path)
    top, rest = path[0], path[1:]
    if top in ("rs_encoder", "teacher_rs"):
        key, rule = _croma(rest)
        return ("rs_encoder" if top == "rs_encoder" else "rs_encoder_teacher") + ".s2_encoder." + key, rule
    if top in ("sv_encoder", "teacher_sv"):
        key, rule = _hf_vit(rest)
        pre = "sv_encoder." if top == "sv_encoder" else "sv_encoder_teacher."
        return (tuple(pre + k for k in key) if isinstance(key, tuple) else pre + key), rule
    if top == "location_encoder":
        key, rule = _geoclip(rest)
        return "location_encoder." + key, rule
    if top == "sv_proj":
        return generic_rule(("optical_proj", *rest))
    return generic_rule(path)


def strip_module(state_dict):
    """DDP's `module.` prefix off every key, and the `model` entry of a training checkpoint."""
    if "model" in state_dict and isinstance(state_dict["model"], dict):
        state_dict = state_dict["model"]
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def params_from_gair(state_dict, target, source="state_dict"):
    """GAIR checkpoint state_dict → (params like `target`, queue state {queue, queue_ptr} or None, report)."""
    sd = hf_vit_names(hf_vit_names(strip_module(state_dict), "sv_encoder."), "sv_encoder_teacher.")
    unused = [k for k in sd if k.startswith(GAIR_UNUSED_PREFIXES) or k in GAIR_UNUSED_KEYS]
    params, used = params_from_named(sd, target, gair_name, unused, source)
    queue = None
    if "queue_for_location" in sd:
        q = np.asarray(sd["queue_for_location"], np.float32).T
        queue = dict(queue=q, queue_ptr=np.asarray(sd.get("queue_ptr_location", [0]), np.int32).reshape(-1)[0])
    return params, queue, dict(converted=len(used), unused_listed=sorted(unused))


def gair_state_dict(params, queue=None):
    """Our params (+ the queue state) → a GAIR checkpoint state_dict (the keys our model holds)."""
    sd = state_dict_from_named(params, gair_name)
    if queue is not None:
        sd["queue_for_location"] = np.asarray(queue["queue"], np.float32).T
        sd["queue_ptr_location"] = np.asarray([queue["queue_ptr"]], np.int64)
    return sd


# ------------------------------------------------------------------ the single encoders' reference layouts
def rs_from_torchgeo(state_dict, target, source="torchgeo CROMA ViT", reinit_patch_layer=False):
    """torchgeo `croma.ViT` state_dict → our RSEncoder params (like `target`). Also CROMA's released file (its optical
    encoder under `s2_encoder.`; the radar and joint encoders are ignored) and GAIR's (`rs_encoder.s2_encoder.`).

    reinit_patch_layer: a `linear_input` for another band count (CROMA's 12 bands, GAIR's 10) is left out of the
    result, so the caller keeps its fresh initialisation, as GAIR's research code does; otherwise it is an error."""
    for prefix in ("rs_encoder.s2_encoder.", "s2_encoder."):
        if any(k.startswith(prefix) for k in state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    target = dict(target)
    if reinit_patch_layer and "linear_input.weight" in state_dict and (
            np.shape(state_dict["linear_input.weight"])[1] != target["linear_input"]["kernel"].shape[0]):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("linear_input.")}
        del target["linear_input"]
    return params_from_named(state_dict, target, lambda p: _croma(tuple(map(str, p))), (), source)[0]


def sv_from_hf(state_dict, target, source="HF ViTModel"):
    """transformers `ViTModel` state_dict (e.g. google/vit-base-patch16-224-in21k's file; a `vit.` prefix is
    dropped) → our SVEncoder params."""
    if any(k.startswith("vit.") for k in state_dict):
        state_dict = {k.removeprefix("vit."): v for k, v in state_dict.items()}
    return params_from_named(hf_vit_names(state_dict), target, lambda p: _hf_vit(tuple(map(str, p))), (), source)[0]


def location_from_geoclip(state_dict, target, source="geoclip LocationEncoder"):
    """geoclip `LocationEncoder` state_dict → our LocationEncoder params (512-wide heads: out_dim=512)."""
    return params_from_named(state_dict, target, lambda p: _geoclip(tuple(map(str, p))), (), source)[0]


def rs_to_torchgeo(params):
    """Our RS encoder params → a torchgeo `croma.ViT` state_dict."""
    return state_dict_from_named(params, lambda p: _croma(tuple(map(str, p))))


def sv_to_hf(params):
    """Our SV encoder params → a `transformers` ViTModel state_dict (transformers 4 key names, as the Hub's files)."""
    return state_dict_from_named(params, lambda p: _hf_vit(tuple(map(str, p))))


def location_to_geoclip(params):
    """Our location encoder params → a geoclip `LocationEncoder` state_dict."""
    return state_dict_from_named(params, lambda p: _geoclip(tuple(map(str, p))))


__all__ = ["ConversionError", "gair_name", "gair_state_dict", "location_from_geoclip", "location_to_geoclip",
           "params_from_gair", "rs_from_torchgeo", "rs_to_torchgeo", "strip_module", "sv_from_hf", "sv_to_hf"]
