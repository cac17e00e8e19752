"""The teacher-feature cache job: run each MaKA teacher once over a set of pair shards and write the shards again
with `teacher_<name>` float16 [T, D] in every record, so that the training step never runs a teacher.

Each teacher sees 3 bands chosen by their channel-sampling rule (maka.teacher_bands), the whole image resized
bilinearly to the teacher's input size, normalised as the student's input ((x/255 − 0.5)/0.5, their code feeds the
student's tensor to the teachers), and gives its patch tokens (prefix tokens dropped):
- its JAX-native tower (`TeacherConfig.tower`: SigLIP, DINOv2-L/14-reg, ViT-L/16 AugReg as timm builds them;
  weights from a timm or open_clip checkpoint, or random), the same tower an online teacher runs in the step;
- else a timm model (`TeacherConfig.timm`, torch, weights from a local file).
The output is staged (appears whole or not at all); its manifest lists the cached teachers and their shapes.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from geolink_jax.data import outputs, record_format, shards
from geolink_jax.dofa_clip import maka
from geolink_jax.dofa_clip.pipeline import model_pixels
from geolink_jax.dofa_clip.preprocess import FORMAT, VERSION, decode, decode_image


def _jax_runner(t: maka.TeacherConfig, seed=0):
    import dataclasses

    from flax import nnx

    from geolink_jax.dofa_clip import convert as dofa_convert
    from geolink_jax.dofa_clip.towers import ImageTower

    tower = ImageTower(dataclasses.replace(t.tower, taps=(-1,)), rngs=nnx.Rngs(seed))
    if t.weights:
        dofa_convert.load_image_tower(tower, t.weights)
    forward = jax.jit(lambda m, x: m(x)[1][-1])
    return lambda x: np.asarray(forward(tower, jnp.asarray(x)))


def _timm_runner(t: maka.TeacherConfig):
    import timm
    import torch

    model = timm.create_model(t.timm, pretrained=False, num_classes=0, img_size=t.image_size).eval()
    if t.weights:
        from geolink_jax.convert.files import load_weights

        sd, _ = load_weights(t.weights)
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}, strict=True)
    prefix = getattr(model, "num_prefix_tokens", 0)

    def run(x):
        with torch.no_grad():
            out = model.forward_features(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        return out[:, prefix:].numpy()
    return run


def runner(t: maka.TeacherConfig, seed=0):
    """A teacher → f(images float32 [n, S, S, 3]) -> tokens [n, T, D]."""
    if t.tower is not None:
        return _jax_runner(t, seed)
    if t.timm:
        return _timm_runner(t)
    raise ValueError(f"teacher {t.name}: give a JAX-native `tower` or a `timm` model name to cache its features")


def teacher_input(record, t: maka.TeacherConfig, rule, image=None):
    """A record's teacher input float32 [S_t, S_t, 3] (`image`: its decoded pixels, if already at hand)."""
    image = decode_image(record) if image is None else image
    bands = maka.teacher_bands(record["wavelengths"], rule)
    return model_pixels(np.ascontiguousarray(image[..., bands]), (0, 0, image.shape[1], image.shape[0]),
                        t.image_size)


def cache_features(in_dir, out_dir, teachers, rule="nearest_rgb", batch_size=16, progress=True, overwrite=False,
                   seed=0):
    """Shards of `in_dir` + every teacher's features → `out_dir`. Returns the new manifest."""
    from tqdm import tqdm

    manifest = outputs.load_manifest(in_dir)
    paths = shards.manifest_shards(in_dir, manifest)
    runs = {t.name: runner(t, seed) for t in teachers}

    def write(staging):
        bar = tqdm(total=manifest["num_records"], unit="pair", desc="teacher features", disable=not progress)
        for path in paths:
            records = shards.read_shard(path, decode)
            images = [decode_image(r) for r in records]  # once per record, whatever the number of teachers
            for t in teachers:
                feats = []
                for i in range(0, len(records), batch_size):
                    x = np.stack([teacher_input(r, t, rule, im) for r, im in zip(records[i:i + batch_size],
                                                                                 images[i:i + batch_size])])
                    feats.append(runs[t.name](x))
                feats = np.concatenate(feats) if feats else np.zeros((0, t.tokens, t.width))
                if feats.shape[1:] != (t.tokens, t.width):
                    raise shards.DataError(f"teacher {t.name} gives tokens {feats.shape[1:]}, its config says "
                                           f"{(t.tokens, t.width)}")
                for r, f in zip(records, feats):
                    r[f"teacher_{t.name}"] = f.astype(np.float16)
            shards.write_shard(str(staging / pathlib.Path(path).name),
                               [record_format.encode(r, FORMAT, VERSION) for r in records])
            bar.update(len(records))
        bar.close()
        out = dict(manifest)
        out["teachers"] = {**manifest.get("teachers", {}), **{
            t.name: dict(shape=[t.tokens, t.width], image_size=t.image_size, band_rule=rule,
                         model=f"jax tower ({t.timm or 'SigLIP'})" if t.tower is not None else t.timm,
                         weights=t.weights or f"random (seed {seed})")
            for t in teachers}}
        (staging / outputs.ERRORS).write_bytes((pathlib.Path(in_dir) / outputs.ERRORS).read_bytes()
                                              if (pathlib.Path(in_dir) / outputs.ERRORS).exists() else b"")
        outputs.write_json(staging / outputs.MANIFEST, out)
        return out

    return outputs.staged_output(out_dir, overwrite, write)


def bundled_with_features(data_dir, out_dir, teachers):
    """`data_dir` with these teachers' features cached into `out_dir` once (reused when its manifest lists them)."""
    out_dir = pathlib.Path(out_dir)
    manifest = out_dir / outputs.MANIFEST
    if manifest.exists() and all(t.name in json.loads(manifest.read_text()).get("teachers", {}) for t in teachers):
        return out_dir
    cache_features(data_dir, out_dir, teachers, progress=False, overwrite=True)
    return out_dir
