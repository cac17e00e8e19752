"""Where the host time of GAIR's and DOFA-CLIP's on-device input paths goes, stage by stage (issue 27).

    python benchmarks/input_stages.py      # ~1 min on 2 cores; prints a markdown table (medians, ms, one thread)

GAIR: the bundled patches preprocessed with photos stored at 224 px (raw), per patch of 5 photos at the 32-photo
budget of gair_vit_b; DOFA-CLIP: the bundled pairs (OSM-captioned RGB windows up to 423 × 335 px, Landsat 8 and
Sentinel-2 patches), per pair at 224 px, on the canvas of the largest image. The grain machinery (shuffle, reader
thread, batching) is not in these numbers: the `input` bench rows are the whole cost.
"""

import statistics
import sys
import tempfile
import time

import numpy as np


def timed(stages, name, fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    stages.setdefault(name, []).append(1000 * (time.perf_counter() - t))
    return out


def gair(tmp, repeats=60):
    from geolink_jax import samples
    from geolink_jax.data import outputs, shards
    from geolink_jax.gair import augment, pipeline, preprocess

    out = f"{tmp}/gair"
    preprocess.run_local(samples.GAIR_DIR / "patches", samples.GAIR_DIR / "street_view.csv", out,
                         preprocess.GAIRPreprocessConfig(sv_size=224, sv_format="raw"), progress=False)
    source = shards.ShardSource(shards.manifest_shards(out, outputs.load_manifest(out)))
    cfg = pipeline.GAIRPipelineConfig(batch_size=1, sv_budget=32, rs_size=96, sv_size=224)
    rng, stages = np.random.default_rng(0), {}
    for k in range(repeats):
        raw = timed(stages, "record read", source.__getitem__, k % len(source))
        record = timed(stages, "record decode (msgpack)", preprocess.decode, raw)
        timed(stages, "RS to uint8 levels", lambda: np.round(augment.normalize_rs(
            record["rs"], cfg.band_mean, cfg.band_std) * 255).astype(np.uint8))
        sv = timed(stages, "photo buffer (32 × 224² × 3 zeros)", np.zeros, (32, 224, 224, 3), np.uint8)
        for i in range(len(record["sv_images"])):
            sv[i] = timed(stages, "photos (raw → array, copy), all 5", preprocess.photo_pixels, record, i, 224)
        timed(stages, "draws (5 flips + jitters, RS jitter)", lambda: [augment.draw(rng, augment.SV_JITTER)
                                                                      for _ in range(6)])
    # the 5 photos of a patch are one stage
    stages["photos (raw → array, copy), all 5"] = [sum(stages["photos (raw → array, copy), all 5"][i:i + 5])
                                                   for i in range(0, repeats * 5, 5)]
    return stages


def dofa(tmp, repeats=150):
    from geolink_jax.data import outputs, shards
    from geolink_jax.dofa_clip import family, pipeline, preprocess
    from geolink_jax.dofa_clip.tokenizer import make_tokenizer

    out = preprocess.bundled(f"{tmp}/dofa")
    manifest = outputs.load_manifest(out)
    source = shards.ShardSource(shards.manifest_shards(out, manifest))
    canvas = family.canvas(manifest)
    tok = make_tokenizer("clip_bpe", 64)
    rng, stages = np.random.default_rng(0), {}
    for k in range(repeats):
        raw = timed(stages, "record read", source.__getitem__, k % len(source))
        record = timed(stages, "record decode (msgpack)", preprocess.decode, raw)
        image = timed(stages, "image decode (PNG / array)", preprocess.decode_image, record)
        h, w, c = image.shape
        timed(stages, "crop draw", pipeline.random_resized_crop, rng, h, w, (0.9, 1.0), (3 / 4, 4 / 3))

        def place():
            x = np.zeros((*canvas, 16 if c > 8 else 8 if c > 3 else 3), np.uint8)
            x[:h, :w, :c] = image
            return x
        timed(stages, f"canvas {canvas[0]}×{canvas[1]} (zeros + copy)", place)
        timed(stages, "tokenize (CLIP BPE)", tok, [record["caption"]])
    return stages


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, stages in (("GAIR, per patch of 5 photos", gair(tmp)), ("DOFA-CLIP, per pair", dofa(tmp))):
            rows.append(f"| **{name}** | |")
            total = 0.0
            for stage, ms in stages.items():
                med = statistics.median(ms)
                total += med
                rows.append(f"| {stage} | {med:.3f} |")
            rows.append(f"| sum of the stages | {total:.3f} |")
    print("| stage | ms (median, one thread) |\n|---|---|\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
