"""GAIR's grain pipeline over its patch shards: one element per RS patch with up to `sv_budget` of its street views
(a random subset when it has more, padded with a validity mask when fewer), deterministic per element and
checkpointable like GeoLink's (the same source → shuffle → map → batch chain of data/pipeline.py).

Host batch (leading B):
  rs float32 [B, S_rs, S_rs, C] (normalised to [0, 1] in 8-bit steps, resized), sv uint8 [B, S, 224, 224, 3]
  (resized, flipped), sv_valid bool [B, S], sv_lonlat float32 [B, S, 2], sv_rel float32 [B, S, 2],
  jitter draws: rs_jitter_{apply [B], factors [B, 4], order [B, 4]}, sv_jitter_{apply [B, S], factors [B, S, 4],
  order [B, S, 4]}.
The step (`step_inputs`) normalises the photos and applies the jitters (gair/augment.py).

With `data.augment_on_device` the host only decodes and draws: rs is uint8 [B, H, W, C] (the normalised levels at
the patches' stored size, one size for the whole data), photos are not flipped, sv_flip bool [B, S] says which to
flip; the step resizes rs (bicubic, antialiased) and flips the photos. The draws are the host path's, in its order,
so a sample gets the same augmentation either way; the flipped photos are exact, the resized bands within
resampling of Pillow's (tests/test_gair_data.py).
"""

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from geolink_jax.data import shards
from geolink_jax.data.pipeline import batched, batches, iterate
from geolink_jax.gair import augment
from geolink_jax.gair.preprocess import decode, photo_pixels


@dataclasses.dataclass(frozen=True)
class GAIRPipelineConfig:
    batch_size: int  # per host
    sv_budget: int
    rs_size: int
    sv_size: int
    band_mean: tuple = augment.S2_MEAN
    band_std: tuple = augment.S2_STD
    train: bool = True
    seed: int = 0
    worker_count: int = 0
    read_threads: int = 2
    # "patch": an element is a patch with up to sv_budget of its photos (ours, the default); "photo": an element is
    # one photo with its patch, every photo once per epoch (the research code's sample; needs sv_budget 1)
    sampling: str = "patch"
    on_device: bool = False  # data.augment_on_device: RS resize and photo flips in the step (see above)


SAMPLINGS = ("patch", "photo")


def resize_bands(x, size):
    """float [H, W, C] → [size, size, C], bicubic per band (PIL float images)."""
    if x.shape[0] == size and x.shape[1] == size:
        return x.astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(x[..., c].astype(np.float32), "F").resize((size, size),
                                                                                           Image.BICUBIC))
                     for c in range(x.shape[-1])], -1)


class PatchToSample(grain.transforms.RandomMap):
    def __init__(self, cfg: GAIRPipelineConfig):
        self.cfg = cfg

    def random_map(self, data, rng):
        """data: a record's bytes, or (bytes, photo index) under per-photo sampling."""
        cfg = self.cfg
        data, photo = data if isinstance(data, tuple) else (data, None)
        record = decode(data)
        if len(cfg.band_mean) != record["rs"].shape[-1]:
            raise shards.DataError(f"patch {record['patch_id']}: {record['rs'].shape[-1]} bands but "
                                   f"{len(cfg.band_mean)} band statistics (set model band_mean/band_std)")
        rs = augment.normalize_rs(record["rs"], cfg.band_mean, cfg.band_std)
        rs = np.round(rs * 255.0).astype(np.uint8) if cfg.on_device else resize_bands(rs, cfg.rs_size)
        n, s = len(record["sv_images"]), cfg.sv_budget
        if photo is not None:
            chosen = np.array([photo])
        else:
            chosen = np.sort(rng.choice(n, s, replace=False)) if n > s else np.arange(n)
        sv = np.zeros((s, cfg.sv_size, cfg.sv_size, 3), np.uint8)
        jit_apply, jit_f, jit_o = np.zeros(s, bool), np.tile([1, 1, 1, 0], (s, 1)).astype(np.float32), \
            np.tile(np.arange(4), (s, 1)).astype(np.int32)
        flip = np.zeros(s, bool)
        for j, i in enumerate(chosen):
            pixels = photo_pixels(record, i, cfg.sv_size)
            if cfg.train:
                flip[j] = rng.random() < 0.5
                if flip[j] and not cfg.on_device:
                    pixels = pixels[:, ::-1]
                jit_apply[j], jit_f[j], jit_o[j] = augment.draw(rng, augment.SV_JITTER)
            sv[j] = pixels
        valid = np.arange(s) < len(chosen)
        pad = lambda a: np.concatenate([a, np.zeros((s - len(a), *a.shape[1:]), a.dtype)])  # noqa: E731
        rs_apply, rs_f, rs_o = (augment.draw(rng, augment.RS_JITTER) if cfg.train else
                                (np.bool_(False), np.array([1, 1, 1, 0], np.float32), np.arange(4, dtype=np.int32)))
        extra = dict(sv_flip=flip) if cfg.on_device else {}
        return dict(rs=rs, sv=sv, sv_valid=valid, **extra,
                    sv_lonlat=pad(np.asarray(record["sv_lonlat"], np.float32)[chosen]),
                    sv_rel=pad(np.asarray(record["sv_rel"], np.float32)[chosen]),
                    rs_jitter_apply=rs_apply, rs_jitter_factors=rs_f, rs_jitter_order=rs_o,
                    sv_jitter_apply=jit_apply, sv_jitter_factors=jit_f, sv_jitter_order=jit_o)


class PhotoSource(grain.sources.RandomAccessDataSource):
    """Per-photo sampling: element i is (the bytes of the record holding photo i, its index there)."""

    def __init__(self, paths, sv_counts):
        self._records = shards.ShardSource(paths)
        counts = np.asarray(sv_counts, np.int64)
        self._record = np.repeat(np.arange(len(counts)), counts)
        self._photo = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)

    def __len__(self):
        return len(self._record)

    def __getitem__(self, i):
        return self._records[int(self._record[i])], int(self._photo[i])


class CountedPatchToSample(PatchToSample):
    """The training pipeline's map: a sample with stats {photos: its real photos} (the log's and the input bench's
    count; the trainer takes `stats` out of the batch before the step)."""

    def random_map(self, data, rng):
        sample = super().random_map(data, rng)
        sample["stats"] = dict(photos=np.int32(sample["sv_valid"].sum()))
        return sample


def make_dataset(paths, cfg: GAIRPipelineConfig, process_index=0, process_count=1, manifest=None):
    if cfg.sampling not in SAMPLINGS:
        raise ValueError(f"data.sampling {cfg.sampling!r}: one of {', '.join(SAMPLINGS)}")
    if cfg.sampling == "patch":
        return batched(paths, CountedPatchToSample(cfg), None, cfg.batch_size, train=cfg.train, seed=cfg.seed,
                       read_threads=cfg.read_threads, worker_count=cfg.worker_count, process_index=process_index,
                       process_count=process_count)
    if cfg.sv_budget != 1:
        raise ValueError(f"data.sampling='photo' takes one photo per element: set model.sv_budget=1 (is "
                         f"{cfg.sv_budget})")
    if "sv_counts" not in (manifest or {}):
        raise shards.DataError("data.sampling='photo' needs the photos per patch in manifest.json (sv_counts): "
                               "preprocess the patches again with this version")
    ds = batches(grain.MapDataset.source(PhotoSource(paths, manifest["sv_counts"])), CountedPatchToSample(cfg), None,
                 cfg.batch_size, train=cfg.train, seed=cfg.seed, process_index=process_index,
                 process_count=process_count)
    return iterate(ds, cfg.read_threads, cfg.worker_count)


def step_inputs(batch, rs_size=None):
    """Host batch (on device) → the model's inputs: photos normalised, both jitters applied (see augment.py); an
    on-device batch's photos flipped and its uint8 RS resized (bicubic, antialiased) to `rs_size`."""
    mean, std = jnp.asarray(augment.SV_MEAN), jnp.asarray(augment.SV_STD)
    sv = batch["sv"]
    if "sv_flip" in batch:
        sv = jnp.where(batch["sv_flip"][..., None, None, None], sv[..., :, ::-1, :], sv)
    sv = (sv.astype(jnp.float32) - mean) / std
    sv = augment.jitter(sv, batch["sv_jitter_factors"], batch["sv_jitter_order"], batch["sv_jitter_apply"])
    rs = batch["rs"]
    if rs.dtype == jnp.uint8:
        rs = rs.astype(jnp.float32) / 255.0
        if rs_size and rs.shape[1:3] != (rs_size, rs_size):
            rs = jax.image.resize(rs, (rs.shape[0], rs_size, rs_size, rs.shape[-1]), "bicubic", antialias=True)
    rs = rs.astype(jnp.float32)
    ch = list(augment.RS_JITTER["channels"])
    rgb = augment.jitter(rs[..., ch], batch["rs_jitter_factors"], batch["rs_jitter_order"], batch["rs_jitter_apply"])
    rs = rs.at[..., ch].set(rgb)
    return dict(rs=rs, sv=sv, sv_valid=batch["sv_valid"], sv_lonlat=batch["sv_lonlat"], sv_rel=batch["sv_rel"])
