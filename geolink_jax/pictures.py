"""Pictures a person would rather look at than read: MAE reconstructions and OSM graphs drawn on their tiles.

Pure numpy + Pillow (no plotting stack needed). Images come in as the pipeline feeds them: float [H, W, 3],
ImageNet-normalised; positions as the graph stores them: (x, y) pairs in [0, 1], y pointing down the image.
"""

import numpy as np
from PIL import Image, ImageDraw

from geolink_jax.nn.vit import patchify, unpatchify
from geolink_jax.osm import NODE_TYPES, RELATIONS, relation_name
from geolink_jax.tiles.augment import IMAGENET_MEAN, IMAGENET_STD

# Colours per node type (RGB) and for edges.
NODE_COLOURS = {"polygon": (255, 170, 0), "line": (0, 200, 255), "point": (255, 40, 120)}
EDGE_COLOUR = (255, 255, 255, 90)


def to_uint8(image):
    """ImageNet-normalised float [H, W, 3] → uint8 [H, W, 3]."""
    rgb = np.asarray(image, np.float32) * IMAGENET_STD + IMAGENET_MEAN
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def reconstruct(images, pred, mask, patch_size, norm_pix=True):
    """The MAE picture arrays: (masked input, reconstruction with the visible patches pasted back).

    images float [B, H, W, C] (normalised); pred float [B, L, p·p·C]; mask [B, L] (1 = removed). With norm_pix the
    prediction is in per-patch normalised units and is mapped back with each target patch's mean and unbiased std
    (the loss's own normalisation). Returns two float32 arrays [B, H, W, C] in the input's units."""
    images = np.asarray(images, np.float32)
    b, h, w, c = images.shape
    gh, gw = h // patch_size, w // patch_size
    target = np.asarray(patchify(images, patch_size))
    pred = np.asarray(pred, np.float32)
    if norm_pix:
        mean = target.mean(-1, keepdims=True)
        std = np.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6)
        pred = pred * std + mean
    removed = np.asarray(mask, np.float32)[..., None]
    masked_input = target * (1.0 - removed)
    pasted = target * (1.0 - removed) + pred * removed
    back = lambda x: np.asarray(unpatchify(x, patch_size, gh, gw, c))  # noqa: E731
    return back(masked_input), back(pasted)


def reconstruction_figure(images, pred, mask, patch_size, norm_pix=True, scale=2):
    """One row per sample: original | masked input | reconstruction. Returns a PIL RGB image."""
    masked_input, pasted = reconstruct(images, pred, mask, patch_size, norm_pix)
    rows = [np.concatenate([to_uint8(a), to_uint8(m), to_uint8(r)], axis=1)
            for a, m, r in zip(np.asarray(images), masked_input, pasted)]
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def graph_figure(image, positions, n_node, senders, receivers, n_edge, size=448):
    """One tile with its OSM graph: edges (faint, centroid to centroid), polygons (the triangle of their three sample
    points, filled, and the centroid), lines (start–centroid–end), points (dots). image float [H, W, 3] normalised;
    the graph arrays are one sample's, keyed like GraphBatch
    (positions[t] [N_t, 8|6|2], n_node[t] scalar, senders/receivers[r] [E_r], n_edge[r] scalar)."""
    base = Image.fromarray(to_uint8(image)).resize((size, size), Image.BILINEAR).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    xy = {t: np.asarray(positions[t], np.float32)[: int(n_node[t])] * size for t in NODE_TYPES}
    # One point per node for its edges: polygon centroid (4th pair), line centroid (1st pair), the point itself.
    anchor = {"polygon": xy["polygon"][:, 6:8], "line": xy["line"][:, 0:2], "point": xy["point"]}
    for src, dst in RELATIONS:
        r = relation_name(src, dst)
        e = int(n_edge[r])
        for s, d in zip(np.asarray(senders[r])[:e], np.asarray(receivers[r])[:e]):
            if s < len(anchor[src]) and d < len(anchor[dst]):
                draw.line([tuple(anchor[src][s]), tuple(anchor[dst][d])], fill=EDGE_COLOUR, width=1)
    for p in xy["polygon"]:
        draw.polygon([tuple(q) for q in p[:6].reshape(3, 2)], fill=NODE_COLOURS["polygon"] + (70,),
                     outline=NODE_COLOURS["polygon"] + (255,), width=2)
        draw.ellipse([p[6] - 2, p[7] - 2, p[6] + 2, p[7] + 2], fill=NODE_COLOURS["polygon"] + (255,))
    for p in xy["line"]:
        c, s, e = p.reshape(3, 2)
        draw.line([tuple(s), tuple(c), tuple(e)], fill=NODE_COLOURS["line"] + (255,), width=2)
    for x, y in xy["point"]:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=NODE_COLOURS["point"] + (255,))
    return Image.alpha_composite(base, overlay).convert("RGB")


# Segmentation palette: the 9 UFZ classes (water, green, farmland, undeveloped, residential, commercial,
# institutional, industrial, transportation), then generic colours for larger label sets.
CLASS_COLOURS = [(30, 110, 230), (40, 170, 60), (200, 220, 90), (170, 140, 100), (250, 200, 60), (230, 60, 50),
                 (160, 80, 200), (110, 110, 120), (240, 240, 240)]


def _class_colour(k):
    if k < len(CLASS_COLOURS):
        return CLASS_COLOURS[k]
    rng = np.random.default_rng(k)
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def colourise(label, image_rgb, alpha=0.55, ignore=255):
    """int [H, W] class map over uint8 [H, W, 3]: classes blended in their colours, ignored pixels left as is."""
    out = image_rgb.astype(np.float32).copy()
    for k in np.unique(label):
        if k == ignore or k < 0:
            continue
        sel = label == k
        out[sel] = (1 - alpha) * out[sel] + alpha * np.array(_class_colour(int(k)), np.float32)
    return out.astype(np.uint8)


def segmentation_figure(images, labels, preds, class_names, scale=2):
    """One row per tile: image | true classes | predicted classes, with a legend. images float [H, W, 3]
    normalised; labels / preds int [H, W] (labels may be None; 255 = ignore). Returns a PIL RGB image."""
    rows = []
    for image, label, pred in zip(images, labels, preds):
        rgb = to_uint8(image)
        truth = colourise(label, rgb) if label is not None else rgb
        rows.append(np.concatenate([rgb, truth, colourise(np.asarray(pred), rgb)], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    legend_h = 18 * ((len(class_names) + 2) // 3) + 24
    canvas = Image.new("RGB", (grid.width, grid.height + legend_h), (255, 255, 255))
    canvas.paste(grid, (0, 0))
    draw = ImageDraw.Draw(canvas)
    col_w = grid.width // 3
    draw.text((4, grid.height + 2), "columns: image | truth | prediction", fill=(0, 0, 0))
    for i, name in enumerate(class_names):
        x, y = 4 + (i % 3) * col_w, grid.height + 20 + 18 * (i // 3)
        draw.rectangle([x, y, x + 12, y + 12], fill=_class_colour(i), outline=(0, 0, 0))
        draw.text((x + 18, y), f"{i} {name}", fill=(0, 0, 0))
    return canvas


def attention_figure(image, attention, grid, node_xy, node_label="", size=448):
    """The fusion block's attention of one OSM node over the image tokens, as a heat map on the tile.

    image float [H, W, 3] normalised; attention float [L] over the gh·gw image tokens (row-major); grid (gh, gw);
    node_xy (x, y) in [0, 1] (y down), marked with a ring. Returns a PIL RGB image."""
    return heat_figure(to_uint8(image), np.asarray(attention, np.float32).reshape(grid), node_xy, node_label, size)


def heat_figure(base, values, point_xy=None, label="", size=448):
    """A heat map of `values` [gh, gw] (min → max: dark → orange-yellow) over an 8-bit RGB picture `base`
    [H, W, 3], a ring at point_xy (x, y) in [0, 1] (y down) if given, and a label. Returns a PIL RGB image."""
    v = np.asarray(values, np.float32)
    v = (v - v.min()) / max(float(v.max() - v.min()), 1e-12)
    heat = Image.fromarray((v * 255).astype(np.uint8), "L").resize((size, size), Image.BILINEAR)
    h = np.asarray(heat, np.float32)[..., None] / 255.0
    hot = np.concatenate([h * 255, h * 120, (1 - h) * 40], axis=-1)  # dark → orange-yellow
    base = np.asarray(Image.fromarray(np.asarray(base, np.uint8)).resize((size, size), Image.BILINEAR), np.float32)
    pic = Image.fromarray((0.45 * base + 0.55 * hot).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pic)
    if point_xy is not None:
        x, y = point_xy[0] * size, point_xy[1] * size
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], outline=(0, 255, 255), width=3)
    if label:
        draw.text((6, 6), label, fill=(255, 255, 255))
    return pic
