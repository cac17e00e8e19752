"""Pretraining augmentation of an (image, tile graph) pair, spec §5.2, on the host (numpy + Pillow).

crop that keeps the nodes inside → renormalised positions → resize → horizontal flip (positions flipped) →
colour jitter → ImageNet normalisation. `draw` makes every random choice (one sequence of draws for both paths);
`augment` applies them with Pillow; `augment_for_device` (`on_device=True`) applies only the graph half and leaves
the pixels to the train step (`device_augment.py`), which costs the host ~6x less CPU per sample at 224 px.

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
    on_device: bool = False  # crop/resize/flip/jitter/normalise the pixels in the train step (device_augment.py)


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


def draw_jitter(rng, strength):
    """torchvision ColorJitter's draws: a factor per enabled op (in the order brightness, contrast, saturation, hue),
    then a random order of the enabled ops. Returns (factors float32 [4], order int32 [4]): the disabled ops have
    identity factors (1, 1, 1, 0) and come last in `order`, so applying all four in that order is the same jitter."""
    b, c, s, hue = strength
    factors = np.array([1.0, 1.0, 1.0, 0.0], np.float32)
    enabled = []
    for k, (lo, hi) in enumerate([(max(0.0, 1 - b), 1 + b), (max(0.0, 1 - c), 1 + c), (max(0.0, 1 - s), 1 + s),
                                  (-hue, hue)]):
        if strength[k]:
            factors[k] = rng.uniform(lo, hi)
            enabled.append(k)
    order = [enabled[k] for k in rng.permutation(len(enabled))]
    return factors, np.array(order + [k for k in range(4) if k not in enabled], np.int32)


def _shift_hue(pil, factor):
    """torchvision's PIL hue shift: H channel of PIL's HSV (uint8) += trunc(factor·255), wrapping mod 256."""
    h, sat, val = pil.convert("HSV").split()
    shifted = (np.asarray(h, np.uint8) + np.uint8(int(factor * 255) % 256)).astype(np.uint8)  # wraps
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), sat, val)).convert("RGB")


def apply_jitter_pil(pil, factors, order):
    """The drawn jitter on a PIL RGB image, as torchvision applies it: PIL ImageEnhance and PIL HSV."""
    ops = (lambda im, f: ImageEnhance.Brightness(im).enhance(f), lambda im, f: ImageEnhance.Contrast(im).enhance(f),
           lambda im, f: ImageEnhance.Color(im).enhance(f), _shift_hue)
    identity = (1.0, 1.0, 1.0, 0.0)
    for k in order:
        if factors[k] != identity[k]:
            pil = ops[k](pil, float(factors[k]))
    return pil


def color_jitter(pil, rng, strength):
    """torchvision ColorJitter on a PIL RGB image, as the reference applies it (before ToTensor): brightness,
    contrast, saturation via PIL ImageEnhance, hue via PIL HSV, the four in random order."""
    return apply_jitter_pil(pil, *draw_jitter(rng, strength))


@dataclasses.dataclass
class Draw:
    """One sample's random choices (spec §5.2), shared by the host and the on-device paths.

    box: the drawn crop (x0, y0, w, h), normalised; flip: horizontal flip; jitter: (factors, order) or None."""

    box: tuple
    flip: bool
    jitter: tuple | None


def draw(rng, cfg):
    """The reference's draws, in its order: crop box, flip, colour jitter (cropping the graph draws nothing)."""
    box = crop_box(rng, cfg.faithful_crop, cfg.crop_scale)
    flip = bool(cfg.flip and rng.uniform() < 0.5)
    jitter = None
    if cfg.color_jitter_prob and rng.uniform() < cfg.color_jitter_prob:
        jitter = draw_jitter(rng, cfg.color_jitter)
    return Draw(box, flip, jitter)


def crop_and_flip(d, graph):
    """The drawn crop and flip on the graph → (image crop bbox (x0, y0, x1, y1) normalised or None for no crop,
    graph). Image only (graph None): the box itself. No node inside: no crop (the reference keeps the sample)."""
    x0, y0, w, h = d.box
    if graph is None:
        return (x0, y0, x0 + w, y0 + h), None
    sub, bbox = crop_graph(graph, d.box)
    if sub is not None:
        graph = sub
    return bbox, flip_graph(graph) if d.flip else graph


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


def _draft(pil, bbox, out_w, out_h):
    """Ask a lazy JPEG for the smallest DCT-scaled decode whose crop is still >= (out_w, out_h)."""
    if getattr(pil, "format", None) == "JPEG":
        wid, hgt = pil.size
        need_w = out_w / max(bbox[2] - bbox[0], 1e-6)
        need_h = out_h / max(bbox[3] - bbox[1], 1e-6)
        pil.draft("RGB", (min(int(np.ceil(need_w)), wid), min(int(np.ceil(need_h)), hgt)))


def augment(image, graph, rng, cfg: AugmentConfig):
    """image array (see `as_rgb_pil`) or a lazy PIL image, TileGraph (or None: image only), numpy Generator →
    (float32 [S, S, 3] normalised, TileGraph or None).

    The image stays a uint8 PIL image until the end (as in the reference's torchvision transforms)."""
    pil = as_rgb_pil(image)
    d = draw(rng, cfg)
    bbox, graph = crop_and_flip(d, graph)
    if cfg.draft_decode:
        _draft(pil, bbox or (0.0, 0.0, 1.0, 1.0), cfg.image_size, cfg.image_size)
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    if bbox is not None:
        pil = pil.crop(crop_pixels(bbox, pil.size))
    pil = pil.resize((cfg.image_size, cfg.image_size), Image.BILINEAR)
    if d.flip:
        pil = pil.transpose(Image.FLIP_LEFT_RIGHT)
    if d.jitter is not None:
        pil = apply_jitter_pil(pil, *d.jitter)
    return normalize(np.asarray(pil, np.float32) / 255.0), graph


def augment_for_device(image, rng, cfg: AugmentConfig, canvas):
    """The host half of on-device augmentation: the same draws as `augment` (the same rng sequence); the image is
    only decoded, at a reduced scale if it would not fit the canvas (a JPEG by DCT scaling). The batch places it on
    a fixed canvas (`place_on_canvas`); the graph crop and flip and every pixel op run in the train step
    (`device_augment`).

    canvas: (height, width). Returns (uint8 [h, w, 3] with h, w ≤ canvas, params: the `augment` fields of a batch,
    see `device_augment`)."""
    pil = as_rgb_pil(image)
    d = draw(rng, cfg)
    hc, wc = canvas
    if getattr(pil, "format", None) == "JPEG" and (pil.size[0] > wc or pil.size[1] > hc):
        k = min(8, 1 << int(np.ceil(np.log2(max(pil.size[0] / wc, pil.size[1] / hc)))))
        pil.draft("RGB", (-(-pil.size[0] // k), -(-pil.size[1] // k)))  # a DCT-scaled decode that fits
    if pil.mode != "RGB":
        pil = pil.convert("RGB")
    factor = int(np.ceil(max(pil.size[0] / wc, pil.size[1] / hc)))
    if factor > 1:
        pil = pil.reduce(factor)
    pixels = np.asarray(pil)
    factors, order = d.jitter if d.jitter is not None else (np.array([1, 1, 1, 0], np.float32),
                                                             np.arange(4, dtype=np.int32))
    return pixels, dict(size=np.array(pixels.shape[:2], np.int32), box=np.asarray(d.box, np.float32),
                        flip=np.bool_(d.flip), jitter=np.asarray(factors, np.float32),
                        jitter_order=np.asarray(order, np.int32))


def place_on_canvas(images, canvas):
    """uint8 images [h_i, w_i, 3] (each within the canvas) → uint8 [B, Hc, Wc, 3], each at the top left, zeros
    after (the step repeats each image's last row and column over them)."""
    out = np.empty((len(images), *canvas, 3), np.uint8)
    for i, im in enumerate(images):  # each byte written once (zeroing the whole canvas first costs ~0.1 ms/sample)
        h, w = im.shape[:2]
        out[i, :h, :w] = im
        out[i, :h, w:] = 0
        out[i, h:] = 0
    return out


def normalize(img):
    """float [H, W, 3] in [0, 1] → ImageNet-normalised float32."""
    return ((img - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def resize_only(image, image_size):
    """Evaluation transform: array (see `as_rgb_pil`) or PIL image → resized to a square and normalised (no
    randomness)."""
    pil = as_rgb_pil(image)
    pil = (pil if pil.mode == "RGB" else pil.convert("RGB")).resize((image_size, image_size), Image.BILINEAR)
    return normalize(np.asarray(pil, np.float32) / 255.0)
