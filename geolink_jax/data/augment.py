"""Pretraining augmentation of an (image, tile graph) pair, spec §5.2, on the host (numpy + Pillow).

crop that keeps the nodes inside → renormalised positions → resize → horizontal flip (positions flipped) →
colour jitter → ImageNet normalisation.

`draft_decode=True` (off by default, a speed deviation) decodes a JPEG at the coarsest DCT scale (1/2, 1/4, 1/8)
that still leaves the crop at least the output size, instead of decoding it whole and then downsizing: the crop
box is the same, the pixels differ by the resampling (a few grey levels), and decode + resize cost ~2-4x less on
small outputs such as the demo's 64 px. The reference's crop aspect U(1.5, 2.25) (always taller than wide, a
probable bug) is kept only behind `faithful_crop=True`; the default draws the aspect log-uniformly in [3/4, 4/3].
"""

import dataclasses

import numpy as np
from PIL import Image, ImageEnhance

from geolink_jax.osm import NODE_TYPES

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 224
    crop_scale: tuple = (0.4, 0.9)
    faithful_crop: bool = False
    flip: bool = True
    color_jitter: tuple = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    color_jitter_prob: float = 0.5
    draft_decode: bool = False


def crop_box(rng, faithful, scale=(0.4, 0.9)):
    """A crop (x0, y0, w, h) in normalised image units; its area fraction is drawn uniformly in `scale`."""
    area = rng.uniform(*scale)
    if faithful:
        aspect = rng.uniform() * 0.75 + 1.5
    else:
        aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    w = min(np.sqrt(area / aspect), 1.0)
    h = min(aspect * w, 1.0)
    return rng.uniform(0, 1 - w), rng.uniform(0, 1 - h), w, h


def crop_graph(graph, box):
    """Keep the nodes whose first position pair lies in the box and the edges between kept nodes; renormalise every
    position to the bbox of the kept nodes' positions ∪ the box (±0.005, clamped to [0, 1]).

    Returns (graph, bbox (x0, y0, x1, y1)) or (None, None) when no node survives (the reference then keeps the
    original sample)."""
    x0, y0, w, h = box
    keep = {}
    for t in NODE_TYPES:
        p = graph.positions[t]
        inside = (p[:, 0] >= x0) & (p[:, 0] <= x0 + w) & (p[:, 1] >= y0) & (p[:, 1] <= y0 + h)
        keep[t] = np.nonzero(inside)[0]
    if sum(len(k) for k in keep.values()) == 0:
        return None, None
    sub = graph.subgraph(keep)
    pts = np.concatenate([np.array([[x0, y0], [x0 + w, y0 + h]])]
                         + [sub.positions[t].reshape(-1, 2) for t in NODE_TYPES])
    lo = np.clip(pts.min(0) - 0.005, 0.0, 1.0)
    hi = np.clip(pts.max(0) + 0.005, 0.0, 1.0)
    span = np.maximum(hi - lo, 1e-6)
    positions = {}
    for t in NODE_TYPES:
        p = sub.positions[t]
        positions[t] = ((p.reshape(len(p), p.shape[1] // 2, 2) - lo) / span).reshape(p.shape).astype(np.float32)
    return dataclasses.replace(sub, positions=positions), (lo[0], lo[1], hi[0], hi[1])


def flip_graph(graph):
    """Horizontal flip: x ← 1 − x in every position pair."""
    positions = {}
    for t in NODE_TYPES:
        p = graph.positions[t].copy()
        p[:, 0::2] = 1.0 - p[:, 0::2]
        positions[t] = p
    return dataclasses.replace(graph, positions=positions)


def _shift_hue(pil, factor):
    """torchvision's PIL hue shift: H channel of PIL's HSV (uint8) += trunc(factor·255), wrapping mod 256."""
    h, sat, val = pil.convert("HSV").split()
    shifted = (np.asarray(h, np.uint8) + np.uint8(int(factor * 255) % 256)).astype(np.uint8)  # wraps
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), sat, val)).convert("RGB")


def color_jitter(pil, rng, strength):
    """torchvision ColorJitter on a PIL RGB image, as the reference applies it (before ToTensor): brightness,
    contrast, saturation via PIL ImageEnhance, hue via PIL HSV, the four in random order."""
    b, c, s, hue = strength
    ops = []
    if b:
        ops.append(lambda im, f=rng.uniform(max(0.0, 1 - b), 1 + b): ImageEnhance.Brightness(im).enhance(f))
    if c:
        ops.append(lambda im, f=rng.uniform(max(0.0, 1 - c), 1 + c): ImageEnhance.Contrast(im).enhance(f))
    if s:
        ops.append(lambda im, f=rng.uniform(max(0.0, 1 - s), 1 + s): ImageEnhance.Color(im).enhance(f))
    if hue:
        ops.append(lambda im, f=rng.uniform(-hue, hue): _shift_hue(im, f))
    for k in rng.permutation(len(ops)):
        pil = ops[k](pil)
    return pil


def as_rgb_pil(image):
    """uint8 array [H, W, 3], [H, W, 1] or [H, W] (grey repeated to RGB) or PIL image (possibly not yet decoded,
    converted to RGB by the caller once any draft decode is set up) → PIL image. Any other array is an error:
    preprocessing (`image_rule`) is where a raster becomes 8-bit RGB, never a silent cast here."""
    if not isinstance(image, np.ndarray):
        return image
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] != 3):
        raise ValueError(f"image {image.dtype} {image.shape} is not 8-bit RGB or grey: preprocess the tiles, whose "
                         "image rule (--bands, --stretch) makes 8-bit RGB")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return Image.fromarray(image)


def crop_pixels(bbox, size):
    """Normalised (x0, y0, x1, y1) → pixel box (left, top, right, bottom) of an image of size (W, H), ≥ 1 px."""
    wid, hgt = size
    left, top = int(bbox[0] * wid + 0.5), int(bbox[1] * hgt + 0.5)
    return left, top, max(int(bbox[2] * wid + 0.5), left + 1), max(int(bbox[3] * hgt + 0.5), top + 1)


def augment(image, graph, rng, cfg: AugmentConfig):
    """image array (see `as_rgb_pil`) or a lazy PIL image, TileGraph (or None: image only), numpy Generator →
    (float32 [S, S, 3] normalised, TileGraph or None).

    The image stays a uint8 PIL image until the end (as in the reference's torchvision transforms)."""
    pil = as_rgb_pil(image)
    box = crop_box(rng, cfg.faithful_crop, cfg.crop_scale)
    if graph is None:  # image only: the crop box itself
        cropped, bbox = True, (box[0], box[1], box[0] + box[2], box[1] + box[3])
    else:
        cropped, bbox = crop_graph(graph, box)
        if cropped is None:
            bbox = (0.0, 0.0, 1.0, 1.0)
        else:
            graph = cropped
    if cfg.draft_decode and getattr(pil, "format", None) == "JPEG":
        # Ask for the smallest DCT-scaled decode whose crop is still >= the output size in both directions.
        wid, hgt = pil.size
        need_w = cfg.image_size / max(bbox[2] - bbox[0], 1e-6)
        need_h = cfg.image_size / max(bbox[3] - bbox[1], 1e-6)
        pil.draft("RGB", (min(int(np.ceil(need_w)), wid), min(int(np.ceil(need_h)), hgt)))
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    if cropped is not None:
        pil = pil.crop(crop_pixels(bbox, pil.size))
    pil = pil.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
    if cfg.flip and rng.uniform() < 0.5:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
        graph = flip_graph(graph) if graph is not None else None
    if cfg.color_jitter_prob and rng.uniform() < cfg.color_jitter_prob:
        pil = color_jitter(pil, rng, cfg.color_jitter)
    return normalize(np.asarray(pil, np.float32) / 255.0), graph


def normalize(img):
    """float [H, W, 3] in [0, 1] → ImageNet-normalised float32."""
    return ((img - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def resize_only(image, image_size):
    """Evaluation transform: array (see `as_rgb_pil`) or PIL image → resized to a square and normalised (no randomness)."""
    pil = as_rgb_pil(image)
    pil = (pil if pil.mode == "RGB" else pil.convert("RGB")).resize((image_size, image_size), Image.BILINEAR)
    return normalize(np.asarray(pil, np.float32) / 255.0)
