"""Spec §5.2 augmentation inside the jitted train step (`data.augment_on_device`): the graph crop and the pixels.

The host draws every random choice (`augment.draw`: the same draws in the same order as the host path) and sends
the decoded image on a fixed uint8 canvas and the whole padded graph with them. Here each sample's graph is cropped
to the nodes inside the drawn box (compacted, edges renumbered, positions renormalised, flipped) exactly as the
host path does, and its image is cropped to the resulting bbox and resized (bilinear, antialiased when shrinking,
as PIL's resize), flipped, colour-jittered (PIL's brightness/contrast/saturation blends and its uint8 HSV hue
shift, in the drawn order) and ImageNet-normalised. Every op rounds to 8-bit levels as PIL does, so the pixels
match the host path to within resampling (tests/test_device_augment.py).

Batch fields (leading B): image uint8 [B, Hc, Wc, 3] (the decoded image at the top left, zeros after); graph (the
GraphBatch fields, uncropped); augment = {size int32 [B, 2] (the decoded image's height, width), box float32 [B, 4]
(the drawn crop x0, y0, w, h, normalised), flip bool [B], jitter float32 [B, 4] (brightness, contrast, saturation,
hue factors; identity 1, 1, 1, 0), jitter_order int32 [B, 4]}.
"""

import jax
import jax.numpy as jnp
import numpy as np

from geolink_jax.nn import image_ops
from geolink_jax.osm import NODE_TYPES, RELATIONS, relation_name
from geolink_jax.tiles.augment import IMAGENET_MEAN, IMAGENET_STD


def _u8(x):
    """Rounded to an 8-bit level (PIL's resize and HSV conversion)."""
    return jnp.clip(jnp.round(x), 0.0, 255.0)


def _blend8(x):
    """PIL's ImageEnhance blends truncate to an 8-bit level."""
    return jnp.clip(jnp.trunc(x), 0.0, 255.0)


def _luma(x):
    """PIL's RGB → L in its fixed point: (19595 R + 38470 G + 7471 B + 2^15) >> 16 (exact in float32: < 2^24)."""
    # elementwise, not a matmul: an accelerator's default matmul precision (TF32/bf16) would not be exact
    return jnp.floor((x[..., 0] * 19595.0 + x[..., 1] * 38470.0 + x[..., 2] * 7471.0 + 32768.0) / 65536.0)


def _brightness(x, f):
    return _blend8(x * f)


def _contrast(x, f):
    mean = jnp.floor(jnp.mean(_luma(x)) + 0.5)  # PIL: the grey level of the L image's mean
    return _blend8(mean + f * (x - mean))


def _saturation(x, f):
    grey = _luma(x)[..., None]
    return _blend8(grey + f * (x - grey))


def _hue(x, f):
    """PIL HSV with 8-bit channels: H += trunc(f·255) mod 256."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.max(x, -1)
    c = v - jnp.min(x, -1)
    safe = jnp.where(c > 0, c, 1.0)
    h = jnp.where(v == r, (g - b) / safe, jnp.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = jnp.where(c > 0, (h / 6.0) % 1.0, 0.0)
    s = jnp.where(v > 0, jnp.trunc(c / jnp.where(v > 0, v, 1.0) * 255.0), 0.0) / 255.0
    shift = jnp.trunc(f * 255.0) % 256.0
    h = ((jnp.trunc(h * 255.0) + shift) % 256.0) / 255.0
    v = v / 255.0
    i = jnp.floor(h * 6.0)
    frac = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * frac), v * (1 - s * (1 - frac))
    i = i.astype(jnp.int32) % 6
    rgb = jnp.select([i[..., None] == k for k in range(6)],
                     [jnp.stack(c3, -1) for c3 in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return _u8(rgb * 255.0)


_OPS = (_brightness, _contrast, _saturation, _hue)


def crop_graph(g, box, flip):
    """One padded sample graph (GraphBatch fields without the batch axis), the drawn box (x0, y0, w, h) and flip →
    (graph, image crop bbox (x0, y0, x1, y1)), as `augment.crop_graph` + `flip_graph` + padding do on the host:
    keep the nodes whose first position pair is inside the box and the edges between kept nodes (valid entries
    first, zeros after); renormalise every position to the kept nodes' bbox ∪ the box (±0.005, clamped); with no
    node inside, keep the whole graph and image."""
    x0, y0, w, h = box[0], box[1], box[2], box[3]
    valid, keep = {}, {}
    for t in NODE_TYPES:
        p = g["positions"][t]
        valid[t] = jnp.arange(p.shape[0]) < g["n_node"][t]
        keep[t] = valid[t] & (p[:, 0] >= x0) & (p[:, 0] <= x0 + w) & (p[:, 1] >= y0) & (p[:, 1] <= y0 + h)
    cropped = sum(k.sum() for k in keep.values()) > 0
    keep = {t: jnp.where(cropped, keep[t], valid[t]) for t in NODE_TYPES}
    lo, hi = jnp.stack([x0, y0]), jnp.stack([x0 + w, y0 + h])
    for t in NODE_TYPES:
        pairs = g["positions"][t].reshape(len(keep[t]), -1, 2)
        m = keep[t][:, None, None]
        lo = jnp.minimum(lo, jnp.where(m, pairs, jnp.inf).min((0, 1)))
        hi = jnp.maximum(hi, jnp.where(m, pairs, -jnp.inf).max((0, 1)))
    lo = jnp.where(cropped, jnp.clip(lo - 0.005, 0.0, 1.0), 0.0)
    hi = jnp.where(cropped, jnp.clip(hi + 0.005, 0.0, 1.0), 1.0)
    span = jnp.maximum(hi - lo, 1e-6)

    out = {k: {} for k in g}
    new_index = {}
    for t in NODE_TYPES:
        order = jnp.argsort(~keep[t], stable=True)  # kept nodes first, in their order
        n = keep[t].sum()
        now_valid = jnp.arange(len(order)) < n
        new_index[t] = jnp.cumsum(keep[t]) - 1
        pos = g["positions"][t][order]
        pairs = (pos.reshape(len(order), -1, 2) - lo) / span
        pairs = jnp.where(flip, pairs.at[..., 0].set(1.0 - pairs[..., 0]), pairs)
        out["positions"][t] = jnp.where(now_valid[:, None], pairs.reshape(pos.shape), 0.0).astype(pos.dtype)
        out["nodes"][t] = jnp.where(now_valid[:, None], g["nodes"][t][order], 0)
        out["n_node"][t] = n.astype(g["n_node"][t].dtype)
    for s_, d_ in RELATIONS:
        r = relation_name(s_, d_)
        snd, rcv = g["senders"][r], g["receivers"][r]
        ok = (jnp.arange(len(snd)) < g["n_edge"][r]) & keep[s_][snd] & keep[d_][rcv]
        order = jnp.argsort(~ok, stable=True)
        out["senders"][r] = jnp.where(ok, new_index[s_][snd], 0)[order].astype(snd.dtype)
        out["receivers"][r] = jnp.where(ok, new_index[d_][rcv], 0)[order].astype(rcv.dtype)
        out["n_edge"][r] = ok.sum().astype(g["n_edge"][r].dtype)
    return out, jnp.concatenate([lo, hi])


def _pixel_box(bbox, image_size):
    """`augment.crop_pixels` on device: normalised bbox → (left, top, right, bottom) pixels, at least 1 px."""
    hgt, wid = image_size[0].astype(jnp.float32), image_size[1].astype(jnp.float32)
    left, top = jnp.floor(bbox[0] * wid + 0.5), jnp.floor(bbox[1] * hgt + 0.5)
    return jnp.stack([left, top, jnp.maximum(jnp.floor(bbox[2] * wid + 0.5), left + 1),
                      jnp.maximum(jnp.floor(bbox[3] * hgt + 0.5), top + 1)])



def _pixels(canvas, image_size, bbox, flip, factors, order, size):
    """canvas uint8 [Hc, Wc, 3], the crop bbox (normalised x0, y0, x1, y1) → float32 [size, size, 3] in 8-bit
    levels (0..255)."""
    x = image_ops.crop_resize(canvas, image_size, _pixel_box(bbox, image_size), size)
    x = jnp.where(flip, x[:, ::-1], x)
    for k in range(4):  # the drawn order; a disabled op has an identity factor
        op = order[k]
        x = jnp.select([op == j for j in range(4)], [fn(x, factors[j]) for j, fn in enumerate(_OPS)])
    return x


def _sample(canvas, params, graph, size):
    if graph is None:  # image only: the drawn box is the crop
        b = params["box"]
        bbox = jnp.stack([b[0], b[1], b[0] + b[2], b[1] + b[3]])
    else:
        graph, bbox = crop_graph(graph, params["box"], params["flip"])
    x = _pixels(canvas, params["size"], bbox, params["flip"], params["jitter"], params["jitter_order"], size)
    return x, graph


def levels(batch, size):
    """An on-device-augmentation batch → (images float32 [B, size, size, 3] in 8-bit levels 0..255, cropped graph
    fields or None)."""
    return jax.vmap(lambda c, p, g: _sample(c, p, g, size))(batch["image"], batch["augment"], batch.get("graph"))


def step_inputs(batch, size):
    """The step's inputs → (images float32 [B, size, size, 3] ImageNet-normalised, graph fields or None): as they
    are, or augmented here when the batch carries `augment` draws."""
    if "augment" not in batch:
        return batch["image"], batch.get("graph")
    x, graph = levels(batch, size)
    return (x / 255.0 - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD), graph


def abstract_images(vit, batch_size, manifest=None, data=None):
    """The image part of a batch as ShapeDtypeStructs (compile-ahead, planning): {image float32 [B, S, S, C]}, or,
    with on-device augmentation in the `data` block, {image uint8 canvas, augment}."""
    if data is not None and data.augment_on_device:
        from geolink_jax.tiles import pipeline

        return abstract_inputs(batch_size, pipeline.canvas_size(manifest, data.canvas_size))
    return dict(image=jax.ShapeDtypeStruct((batch_size, vit.image_size, vit.image_size, vit.in_channels), np.float32))


def host_step_inputs(host_batch, size, count):
    """The first `count` samples of a host batch as the step sees them → numpy (images normalised, graph fields or
    None): end-of-run pictures."""
    first = jax.tree.map(lambda x: np.asarray(x)[:count], {k: v for k, v in host_batch.items() if k != "stats"})
    return jax.device_get(jax.jit(step_inputs, static_argnums=1)(first, size))


def abstract_inputs(batch_size, canvas):
    """{image, augment} ShapeDtypeStructs of an on-device-augmentation batch (compile-ahead, planning)."""
    return dict(image=jax.ShapeDtypeStruct((batch_size, *canvas, 3), np.uint8),
                augment=dict(size=jax.ShapeDtypeStruct((batch_size, 2), np.int32),
                             box=jax.ShapeDtypeStruct((batch_size, 4), np.float32),
                             flip=jax.ShapeDtypeStruct((batch_size,), np.bool_),
                             jitter=jax.ShapeDtypeStruct((batch_size, 4), np.float32),
                             jitter_order=jax.ShapeDtypeStruct((batch_size, 4), np.int32)))
