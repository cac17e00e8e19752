"""Pictures a person would rather look at than read: MAE reconstructions, OSM graphs drawn on their tiles, heat
maps, segmentation maps.

Panels are drawn with numpy + Pillow (pixel-exact, testable); the end-of-run pictures put them in matplotlib figures
(titles, column headings, legends, colour bars) saved atomically with `save_figure`. Images come in as the
pipeline feeds them: float [H, W, 3], ImageNet-normalised; positions as the graph stores them: (x, y) pairs in
[0, 1], y pointing down the image.
"""

import io

import numpy as np
from PIL import Image, ImageDraw

from geolink_jax.data import outputs
from geolink_jax.nn.vit import patchify, unpatchify
from geolink_jax.osm import NODE_TYPES, RELATIONS, relation_name
from geolink_jax.tiles.augment import IMAGENET_MEAN, IMAGENET_STD

# Colours per node type (RGB) and per relation (edges, one per relation of RELATIONS: tab10 without the node
# colours' orange, cyan and pink, plus white and navy).
NODE_COLOURS = {"polygon": (255, 170, 0), "line": (0, 200, 255), "point": (255, 40, 120)}
RELATION_COLOURS = {relation_name(s, d): c for (s, d), c in zip(RELATIONS, [
    (31, 119, 180), (44, 160, 44), (148, 103, 189), (140, 86, 75), (127, 127, 127), (188, 189, 34),
    (214, 39, 40), (240, 240, 240), (0, 0, 128)])}
EDGE_ALPHA = 150


def figure(width_in, height_in):
    """A matplotlib Figure not tied to pyplot's global state (no backend switch, nothing left open)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained")


def save_figure(fig, path, dpi=100):
    """The figure as PNG at `path`, whole or not at all (local path or remote URL)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    outputs.write_bytes(str(path), buf.getvalue())


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


def per_image_loss(images, pred, mask, patch_size, norm_pix=True):
    """The reconstruction loss of each image [B]: mean squared error over its removed patches, in the loss's units
    (per-patch normalised targets with norm_pix)."""
    target = np.asarray(patchify(np.asarray(images, np.float32), patch_size))
    if norm_pix:
        target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True, ddof=1) + 1e-6)
    mse = ((np.asarray(pred, np.float32) - target) ** 2).mean(-1)
    removed = np.asarray(mask, np.float32)
    return (mse * removed).sum(-1) / np.maximum(removed.sum(-1), 1.0)


def reconstruction_figure(images, pred, mask, patch_size, norm_pix=True, title="MAE reconstructions"):
    """One row per sample: original | masked input | reconstruction, with column headings, each row's loss and the
    mask ratio in the title. Returns a matplotlib Figure (`save_figure`)."""
    masked_input, pasted = reconstruct(images, pred, mask, patch_size, norm_pix)
    losses = per_image_loss(images, pred, mask, patch_size, norm_pix)
    ratio = float(np.asarray(mask, np.float32).mean())
    n = len(losses)
    fig = figure(7.5, 2.4 * n + 0.9)
    axes = fig.subplots(n, 3, squeeze=False)
    headings = ("original", f"masked input\n({ratio:.0%} of patches removed)",
                "reconstruction\n(visible patches pasted back)")
    for i in range(n):
        for j, picture in enumerate((images[i], masked_input[i], pasted[i])):
            ax = axes[i, j]
            ax.imshow(to_uint8(picture))
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(headings[j], fontsize=9)
        axes[i, 0].set_ylabel(f"sample {i}\nloss {losses[i]:.3f}", fontsize=9)
    fig.suptitle(f"{title}\nloss: mean squared error on the removed patches"
                 + (" (per-patch normalised pixels)" if norm_pix else ""), fontsize=10)
    return fig


def graph_figure(image, positions, n_node, senders, receivers, n_edge, size=448):
    """One tile with its OSM graph as a Pillow panel: edges centroid to centroid in their relation's colour; a
    polygon node as what it is, three sampled points of its footprint (squares, joined by a thin outline) and its
    centroid (dot); lines start–centroid–end; points as dots. image float [H, W, 3] normalised; the graph arrays are
    one sample's, keyed like GraphBatch (positions[t] [N_t, 8|6|2], n_node[t] scalar, senders/receivers[r] [E_r],
    n_edge[r] scalar). `graph_picture` adds the title and legend."""
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
                draw.line([tuple(anchor[src][s]), tuple(anchor[dst][d])], fill=RELATION_COLOURS[r] + (EDGE_ALPHA,),
                          width=1)
    for p in xy["polygon"]:
        corners = [tuple(q) for q in p[:6].reshape(3, 2)]
        draw.polygon(corners, fill=NODE_COLOURS["polygon"] + (40,), outline=NODE_COLOURS["polygon"] + (160,), width=1)
        for x, y in corners:
            draw.rectangle([x - 2, y - 2, x + 2, y + 2], fill=NODE_COLOURS["polygon"] + (255,))
        draw.ellipse([p[6] - 3, p[7] - 3, p[6] + 3, p[7] + 3], fill=NODE_COLOURS["polygon"] + (255,),
                     outline=(0, 0, 0, 255))
    for p in xy["line"]:
        c, s, e = p.reshape(3, 2)
        draw.line([tuple(s), tuple(c), tuple(e)], fill=NODE_COLOURS["line"] + (255,), width=2)
    for x, y in xy["point"]:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=NODE_COLOURS["point"] + (255,))
    return Image.alpha_composite(base, overlay).convert("RGB")


def graph_picture(image, positions, n_node, senders, receivers, n_edge, title="OSM graph", size=448):
    """`graph_figure`'s panel with a title (node and edge counts) and a legend of the node kinds and of the
    relations present (with their edge counts). Returns a matplotlib Figure."""
    from matplotlib.lines import Line2D

    panel = graph_figure(image, positions, n_node, senders, receivers, n_edge, size)
    counts = {t: int(n_node[t]) for t in NODE_TYPES}
    edges = {relation_name(s, d): int(n_edge[relation_name(s, d)]) for s, d in RELATIONS}
    fig = figure(9.5, 5.6)
    ax = fig.add_subplot()
    ax.imshow(panel)
    ax.set_xticks([]), ax.set_yticks([])
    rgb = lambda c: tuple(v / 255 for v in c)  # noqa: E731
    handles = [
        Line2D([], [], ls=":", lw=1, marker="s", ms=4, color=rgb(NODE_COLOURS["polygon"]),
               label=f"polygon node ({counts['polygon']}): 3 footprint samples"),
        Line2D([], [], ls="", marker="o", ms=6, mfc=rgb(NODE_COLOURS["polygon"]), mec="black",
               label="   its centroid (where its edges meet)"),
        Line2D([], [], lw=2, color=rgb(NODE_COLOURS["line"]),
               label=f"line node ({counts['line']}): start–centroid–end"),
        Line2D([], [], ls="", marker="o", ms=5, color=rgb(NODE_COLOURS["point"]),
               label=f"point node ({counts['point']})"),
    ]
    handles += [Line2D([], [], lw=2, color=rgb(RELATION_COLOURS[r]), label=f"edge {r.replace('_', ' ')} ({n})")
                for r, n in edges.items() if n]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
              title="nodes, and edges by DE-9IM relation (count)", title_fontsize=8)
    ax.set_title(f"{title}: {sum(counts.values())} nodes, {sum(edges.values())} edges", fontsize=10)
    return fig


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
