"""DOFA-CLIP's grain pipeline: modality-homogeneous batches of image–caption pairs.

Every (band set, source) group of the manifest is its own stream: its records → decode, random resized crop
(scale 0.9–1, ratio 3/4–4/3, their augmentation) and resize to the model's size, (x/255 − 0.5)/0.5, bands zero-
padded to the model's band bucket, caption tokenised → batches of `batch_size`. The streams' batches are mixed
with weights ∝ source weight × group size (their `normalize_ds_weights_by_ds_len`), deterministically
(`grain.MapDataset.mix`), so every batch holds one band set and a batch's shapes take one of as many values as there
are band buckets in the data: that many compilations, however many band sets.

Host batch (leading B):
  image float32 [B, S, S, Cb], wavelengths float32 [B, Cb] (µm, 0 for padding), band_valid bool [B, Cb],
  tokens int32 [B, L], teacher_bands int32 [B, 3], teacher_<name> float16 [B, T, D] (cached teachers).
A record with cached teacher features is not cropped, so that its features still describe its pixels.

With `data.augment_on_device` the host only decodes and draws: image is uint8 [B, Hc, Wc, Cb] (the decoded image at
the top left of a canvas of the data's largest image size, bands zero-padded), crop float32 [B, 4] (the drawn box
x0, y0, w, h in pixels), image_hw int32 [B, 2]; `step_inputs` crops, resizes (bilinear, antialiased when shrinking,
to 8-bit levels, as Pillow) and normalises in the step. Same draws as the host path; pixels within resampling of
Pillow's (tests/test_dofa_clip_data.py).
"""

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from geolink_jax.data import pipeline, shards
from geolink_jax.dofa_clip import maka
from geolink_jax.dofa_clip.model import bucket
from geolink_jax.dofa_clip.preprocess import decode, decode_image
from geolink_jax.nn import image_ops


@dataclasses.dataclass(frozen=True)
class DOFACLIPPipelineConfig:
    batch_size: int  # per host
    image_size: int
    context_length: int
    tokenizer: str
    band_buckets: tuple
    teachers: tuple = ()  # names of cached teachers
    teacher_band_rule: str = "nearest_rgb"
    source_weights: tuple = ()  # ((source, weight), …); unlisted sources weigh 1
    crop_scale: tuple = (0.9, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    train: bool = True
    canvas: tuple = ()  # (height, width): on-device augmentation's uint8 canvas (empty: the host path)
    seed: int = 0
    worker_count: int = 0
    read_threads: int = 2


def random_resized_crop(rng, height, width, scale, ratio):
    """torchvision's RandomResizedCrop box (10 tries, then the centre crop of the clamped ratio) → (x0, y0, w, h)."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def resize_bands(image, box, size):
    """uint8 [H, W, C] → float32 [size, size, C]: the box (x0, y0, w, h) resized bilinearly, band by band."""
    x0, y0, w, h = box
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
        (size, size), Image.BILINEAR, box=(x0, y0, x0 + w, y0 + h)), np.float32)
        for c in range(image.shape[-1])], -1)


def model_pixels(image, box, size):
    """uint8 [H, W, C] → the model's input float32 [size, size, C]: the box resized bilinearly band by band, then
    (x/255 − 0.5)/0.5 as SigLIP (and their teachers, which are fed the student's tensor)."""
    return (resize_bands(image, box, size) / 255.0 - 0.5) / 0.5


class PairToSample(grain.transforms.RandomMap):
    def __init__(self, cfg: DOFACLIPPipelineConfig):
        self.cfg = cfg
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:  # built where it runs (a worker process), not pickled to it
            from geolink_jax.dofa_clip.tokenizer import make_tokenizer

            self._tokenizer = make_tokenizer(self.cfg.tokenizer, self.cfg.context_length)
        return self._tokenizer

    def __getstate__(self):
        return {"cfg": self.cfg, "_tokenizer": None}

    def random_map(self, data, rng):
        cfg = self.cfg
        record = decode(data)
        image = decode_image(record)
        h, w, c = image.shape
        wl = np.asarray(record["wavelengths"], np.float32)
        cached = {t: record.get(f"teacher_{t}") for t in cfg.teachers}
        missing = [t for t, v in cached.items() if v is None]
        if missing:
            raise shards.DataError(f"pair {record['pair_id']}: no cached features of teacher(s) {', '.join(missing)} "
                                   "(run `geolink-jax dofa-teachers` on these shards)")
        if cfg.train and not cfg.teachers:
            box = random_resized_crop(rng, h, w, cfg.crop_scale, cfg.crop_ratio)
        else:
            box = (0, 0, w, h)
        cb = bucket(c, cfg.band_buckets)
        if cfg.canvas:
            if h > cfg.canvas[0] or w > cfg.canvas[1]:
                raise shards.DataError(f"pair {record['pair_id']}: a {h}x{w} image exceeds the {cfg.canvas[0]}x"
                                       f"{cfg.canvas[1]} canvas of on-device augmentation (the manifest's largest)")
            padded = np.zeros((*cfg.canvas, cb), np.uint8)
            padded[:h, :w, :c] = image
            extra = dict(crop=np.asarray(box, np.float32), image_hw=np.asarray((h, w), np.int32))
        else:
            padded = np.zeros((cfg.image_size, cfg.image_size, cb), np.float32)
            padded[..., :c] = model_pixels(image, box, cfg.image_size)
            extra = {}
        wavelengths = np.zeros(cb, np.float32)
        wavelengths[:c] = wl
        out = dict(image=padded, **extra, wavelengths=wavelengths, band_valid=np.arange(cb) < c,
                   tokens=self.tokenizer()([record["caption"]])[0],
                   teacher_bands=np.asarray(maka.teacher_bands(wl, cfg.teacher_band_rule), np.int32))
        for t, v in cached.items():
            out[f"teacher_{t}"] = np.asarray(v, np.float16)
        return out


def step_inputs(batch, size):
    """A batch as the model reads it: as it is, or (on-device augmentation: `crop` in it) its canvases cropped,
    resized and normalised here, padded bands zero."""
    if "crop" not in batch:
        return batch
    x = jax.vmap(lambda c, hw, b: image_ops.crop_resize(c, hw, jnp.concatenate([b[:2], b[:2] + b[2:]]), size))(
        batch["image"], batch["image_hw"], batch["crop"])  # crop (x0, y0, w, h) → (left, top, right, bottom)
    x = jnp.where(batch["band_valid"][:, None, None, :], (x / 255.0 - 0.5) / 0.5, 0.0)
    return {**{k: v for k, v in batch.items() if k not in ("crop", "image_hw")}, "image": x}


class Subset:
    """Records `indices` of a random-access source."""

    def __init__(self, source, indices):
        self.source, self.indices = source, np.asarray(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[int(self.indices[i])]


def record_groups(manifest):
    """The group of every record in shard order (the manifest's runs expanded)."""
    runs = manifest.get("record_groups", [])
    return np.concatenate([np.full(n, g, np.int32) for g, n in runs]) if runs else np.zeros(0, np.int32)


def group_weights(manifest, source_weights):
    w = dict(source_weights)
    return [float(w.get(g["source"], 1.0)) * g["count"] for g in manifest["groups"]]


def make_dataset(paths, manifest, cfg: DOFACLIPPipelineConfig, process_index=0, process_count=1):
    """Per-host batches, each of one band set (see the module docstring)."""
    source = shards.ShardSource(paths)
    groups = record_groups(manifest)
    if len(groups) != len(source):
        raise shards.DataError(f"the manifest gives {len(groups)} records their groups, the shards hold "
                               f"{len(source)}: preprocess again")
    transform = PairToSample(cfg)
    streams, weights = [], []
    for g, w in enumerate(group_weights(manifest, cfg.source_weights)):
        idx = np.flatnonzero(groups == g)
        if w <= 0 or not len(idx):
            continue
        streams.append(pipeline.batches(grain.MapDataset.source(Subset(source, idx)), transform, None,
                                        cfg.batch_size, train=cfg.train, seed=cfg.seed + g if cfg.train else cfg.seed,
                                        process_index=process_index, process_count=process_count))
        weights.append(w)
    if not streams:
        raise shards.DataError("no records to read (every group is empty or weighs 0)")
    return pipeline.iterate(pipeline.mixed(streams, weights, cfg.train), cfg.read_threads, cfg.worker_count)
