"""UperNet head weights ↔ the reference's PyTorch `SegUPerNet` state_dict (spec §3.9, §3.11).

One rule per leaf of our `downstream.upernet.UperNet` state (params and BatchNorm running statistics), used in both
directions. Reference names come from its module tree: `neck.ops.<i>.<k>` (k = 0 ConvT, 1 BN, 3 ConvT for the 4x
level; 0 for the 2x level), `psp_modules.<j>.<1 conv | 2 BN>` (0 is the adaptive pool), `bottleneck`,
`fpn_bottleneck`, `lateral_convs.<i>`, `fpn_convs.<i>` (`.0` conv, `.1` BN) and `conv_seg`. Conv kernels are
(O, I, kh, kw) there and (kh, kw, I, O) here; transposed-conv kernels (I, O, kh, kw) there.
"""

import numpy as np
from flax import nnx, traverse_util

from geolink_jax.convert.rules import ConversionError

_LEAF = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
_SUB = {"up1": 0, "bn": 1, "up2": 3}  # inside the 4x neck level's nn.Sequential (2 is the GELU)
_UNUSED_SUFFIX = ".num_batches_tracked"


def torch_name(path):
    """Our state path (tuple) → (reference key, kind) with kind ∈ conv | convT | plain."""
    path = tuple(str(p) for p in path)
    head, leaf = path[:-1], path[-1]
    name = _LEAF[leaf]
    kind = "plain"
    if head[0] == "neck_ops":
        sub = _SUB[head[2]] if len(head) == 3 else 0
        key = f"neck.ops.{head[1]}.{sub}.{name}"
        kind = "convT" if leaf == "kernel" else kind
    elif head[0] == "psp_modules":
        key = f"psp_modules.{head[1]}.{1 if head[2] == 'conv' else 2}.{name}"
    elif head[0] in ("bottleneck", "fpn_bottleneck"):
        key = f"{head[0]}.{0 if head[1] == 'conv' else 1}.{name}"
    elif head[0] in ("lateral_convs", "fpn_convs"):
        key = f"{head[0]}.{head[1]}.{0 if head[2] == 'conv' else 1}.{name}"
    elif head[0] == "conv_seg":
        key = f"conv_seg.{name}"
    else:
        raise ConversionError(f"UperNet: no reference name for {'/'.join(path)}")
    if leaf == "kernel" and kind == "plain":
        kind = "conv"
    return key, kind


def _state_items(head):
    return [(path, v) for path, v in nnx.to_flat_state(nnx.state(head, (nnx.Param, nnx.BatchStat)))]


def load_torch_state_dict(head, state_dict, source="state_dict", prefix=""):
    """Copy a reference SegUPerNet (head part) state_dict into `head` in place. Keys outside the head (the frozen
    `encoder.*`) are ignored when `prefix` selects the head's keys; within the head every key must be used."""
    sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix) and not k.startswith("encoder.")}
    used = set()
    updates = {}
    for path, var in _state_items(head):
        key, kind = torch_name(path)
        if key not in sd:
            raise ConversionError(f"{source}: missing key {prefix}{key}")
        w = np.array(sd[key], np.float32, copy=True)  # never alias the caller's (e.g. torch) buffers
        if kind == "conv":
            w = w.transpose(2, 3, 1, 0)
        elif kind == "convT":
            w = w.transpose(2, 3, 0, 1)
        if w.shape != var.get_value().shape:
            raise ConversionError(f"{source}: {prefix}{key} has shape {w.shape} after transposition, "
                                  f"expected {var.get_value().shape}")
        updates[path] = w
        used.add(key)
    left = sorted(k for k in sd if k not in used and not k.endswith(_UNUSED_SUFFIX))
    if left:
        raise ConversionError(f"{source}: unused UperNet keys {left[:5]}{' …' if len(left) > 5 else ''}")
    state = nnx.state(head, (nnx.Param, nnx.BatchStat))
    pure = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    pure.update(updates)
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(pure))
    nnx.update(head, state)


def torch_state_dict(head):
    """`head` → reference-named numpy state_dict (num_batches_tracked not written)."""
    out = {}
    for path, var in _state_items(head):
        key, kind = torch_name(path)
        w = np.asarray(var.get_value(), np.float32)
        if kind == "conv":
            w = w.transpose(3, 2, 0, 1)
        elif kind == "convT":
            w = w.transpose(2, 3, 0, 1)
        out[key] = np.ascontiguousarray(w)
    return out
