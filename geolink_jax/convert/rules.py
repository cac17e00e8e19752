"""The weight-conversion rule engine every family's converters use: one rule per parameter turns a source tensor
(PyTorch layout) into ours and back, and `params_from_named` maps a whole state_dict onto a parameter tree, strictly.

    copy    same array                              cls_token, mask tokens, biases
    norm    LayerNorm weight → scale                 (PyG graph LayerNorm too)
    linear  Linear weight [out, in] → kernel [in, out]
    qkv     packed q/k/v weight [3E, E] → in_proj.kernel [E, 3, H, Dh]; bias [3E] → [3, H, Dh]   (timm qkv, torch
            MultiheadAttention in_proj_weight: rows q, k, v)
    proj    attention output weight [E, E] → out_proj.kernel [H, Dh, E]
    conv    patch Conv2d weight [D, C, p, p] → kernel [p, p, C, D]
    att     PyG GATConv att_src/att_dst [1, 1, C] → [C]
    lstm    LSTM weight_ih_l0/weight_hh_l0 [4H, in] → [in, 4H] (gate order i, f, g, o kept; both biases kept)
    chw     a [C, H, W] per-position map (torch) → [H, W, C]

A family's layout is a `name_fn(path) -> (source key, rule)`; `generic_rule`, `vit_block_rule` and `mha_rule` are
the pieces layouts share. Knows no family.
"""

import collections
import fnmatch

import numpy as np
from flax import traverse_util


class ConversionError(ValueError):
    pass


# ------------------------------------------------------------------ the rules, both directions
def to_ours(rule, x, shape):
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


def to_source(rule, x, source_shape):
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


def vit_block_rule(rest):
    """Path inside one timm Block (ours) → (timm suffix, rule)."""
    name = ".".join(rest)
    table = {
        "attn.in_proj.kernel": ("attn.qkv.weight", "qkv"), "attn.in_proj.bias": ("attn.qkv.bias", "qkv"),
        "attn.out_proj.kernel": ("attn.proj.weight", "proj"), "attn.out_proj.bias": ("attn.proj.bias", "copy"),
    }
    if name in table:
        return table[name]
    return generic_rule(rest)


def mha_rule(rest):
    """Path inside a torch nn.MultiheadAttention (ours) → (torch suffix, rule)."""
    return {("in_proj", "kernel"): ("in_proj_weight", "qkv"), ("in_proj", "bias"): ("in_proj_bias", "qkv"),
            ("out_proj", "kernel"): ("out_proj.weight", "proj"), ("out_proj", "bias"): ("out_proj.bias", "copy")}[
        tuple(rest)]


def generic_rule(path):
    *head, leaf = path
    if leaf == "kernel":
        return ".".join([*head, "weight"]), "linear"
    if leaf == "scale":
        return ".".join([*head, "weight"]), "norm"
    return ".".join(path), "copy"


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
        expected = np.shape(to_source(rule, np.zeros(leaf.shape, np.float32), (1, 1, -1)))
        try:
            value = to_ours(rule, raw, tuple(leaf.shape))
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
        missing = sum(p.startswith("missing key") for p in problems)
        shapes = len(problems) - missing - len(leftover)
        counts = (f"{shapes} of the model's keys of another shape, {missing} missing, {len(leftover)} of the file's "
                  "unused")
        if not shapes and missing > len(out):  # mostly absent, none misshapen: another model's file
            raise ConversionError(f"{source}: does not look like this model's state dict ({counts}; "
                                  f"{key_summary(state_dict)})")
        # wrong shapes first: the model's own layout at other sizes says most about the mismatch
        problems.sort(key=lambda p: p.startswith(("missing key", "unused key")))
        raise ConversionError(f"{source}: " + "; ".join(problems[:MAX_PROBLEMS])
                              + (f" (+{len(problems) - MAX_PROBLEMS} more; {counts})"
                                 if len(problems) > MAX_PROBLEMS else ""))
    return traverse_util.unflatten_dict(dict(out)), tried


MAX_PROBLEMS = 8  # problems named in one error line; the rest counted


def key_summary(state_dict, first=4):
    """A short description of a state dict for an error line: its tensor count and first keys."""
    keys = sorted(state_dict)
    return f"the file has {len(keys)} tensors: {', '.join(keys[:first])}" + (", …" if len(keys) > first else "")


def state_dict_from_named(params, name_fn):
    """Our params → {key: float32 array} through `name_fn`; a tuple of keys gets the packed array split evenly along
    axis 0 (q, k, v)."""
    sd = {}
    for path, value in traverse_util.flatten_dict(params).items():
        key, rule = name_fn(path)
        x = to_source(rule, np.asarray(value, np.float32), (1, 1, -1))
        if isinstance(key, tuple):
            for k, part in zip(key, np.split(x, len(key))):
                sd[k] = part
        else:
            sd[key] = x
    return sd


def vote(state_dict, sources):
    """The value most tensors agree on for one config field: `sources` are (fnmatch pattern, axis) pairs naming
    every tensor whose shape carries the field. A majority rather than the first match, so that one wrong-shaped
    tensor is blamed by the conversion instead of every correct tensor that shares its dimension."""
    votes = collections.Counter(np.shape(v)[axis] for pattern, axis in sources
                                for k, v in state_dict.items() if fnmatch.fnmatchcase(k, pattern)
                                and len(np.shape(v)) > axis)
    return int(votes.most_common(1)[0][0])
