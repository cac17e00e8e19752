"""Zero-shot classification and image–text retrieval with a DOFA-CLIP model, on any band count.

Classification: each class's text embedding is the re-normalised mean of its prompt templates' embeddings (CLIP's
zero-shot recipe); an image's class is the one of highest σ-logit (the same order as the cosine). Reports top-1
(overall and per class) and top-k accuracy. Retrieval: image → text and text → image recall@k over image–caption
pairs (each image's own caption is its one positive).

Images are batched by band set, padded to the model's band bucket and to a whole batch (padding rows dropped), so
a run compiles once per band bucket.

Demo: the bundled UFZ tiles (sample_data/ufz) cut into `crop`-px crops, each labelled with the majority zone class
of its label map (classes 9 and 255 ignored), 9 zone classes.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np

from geolink_jax.dofa_clip.model import bucket
from geolink_jax.dofa_clip.pipeline import model_pixels
from geolink_jax.dofa_clip.tokenizer import make_tokenizer
from geolink_jax.downstream.metrics import UFZ_CLASSES, recall_at_k  # noqa: F401  (recall_at_k: this module's API)
from geolink_jax.downstream.protocols import TEMPLATES  # the prompt templates, one copy for the sweeps and here


def ufz_crops(ufz_dir, crop=112):
    """UFZ tiles → (uint8 images [N, crop, crop, 3], labels [N], names): crops labelled by their majority class."""
    import pathlib

    from PIL import Image

    ufz_dir = pathlib.Path(ufz_dir)
    images, labels, names = [], [], []
    for path in sorted((ufz_dir / "img").glob("*.png")):
        img = np.asarray(Image.open(path).convert("RGB"))
        lab = np.asarray(Image.open(ufz_dir / "label" / path.name))
        for y in range(0, img.shape[0] - crop + 1, crop):
            for x in range(0, img.shape[1] - crop + 1, crop):
                cls = lab[y:y + crop, x:x + crop].ravel()
                cls = cls[cls < len(UFZ_CLASSES)]
                if cls.size == 0:
                    continue
                images.append(img[y:y + crop, x:x + crop])
                labels.append(int(np.bincount(cls, minlength=len(UFZ_CLASSES)).argmax()))
                names.append(f"{path.stem}@{x},{y}")
    return np.stack(images), np.asarray(labels), names


def labelled_images(path, classes=None, crop=112):
    """A UFZ-layout directory or a labelled table (image, label[, wavelengths]) → ([(images, wavelengths, labels)]
    one entry per band set, class names)."""
    import pathlib

    from geolink_jax.data.shards import DataError
    from geolink_jax.dofa_clip import preprocess

    path = pathlib.Path(path)
    if path.is_dir():
        if not (path / "img").is_dir() or not (path / "label").is_dir():
            raise DataError(f"{path}: not a UFZ-layout directory (img/*.png, label/*.png)")
        images, labels, _ = ufz_crops(path, crop)
        names = tuple(classes.split(",")) if classes else UFZ_CLASSES
        return [(images, np.asarray(preprocess.RGB), labels)], names
    import pandas as pd

    frame = pd.read_csv(path)
    if "image" not in frame or "label" not in frame:
        raise DataError(f"{path}: a labelled table needs columns image, label (wavelengths optional)")
    names = tuple(c.strip() for c in classes.split(",")) if classes else tuple(sorted(set(map(str, frame["label"]))))
    sets = {}
    for i, r in enumerate(frame.to_dict("records")):
        if str(r["label"]) not in names:
            raise DataError(f"{path}: row {i + 2}: label {r['label']!r} is not one of the classes")
        spec = preprocess.PairSpec(i, str(i), str(path.parent / str(r["image"])), str(r["label"]),
                                   preprocess.parse_wavelengths(r.get("wavelengths")), path.stem)
        try:
            image, fmt, wl, _, _ = preprocess.read_image(spec, preprocess.PairPreprocessConfig())
        except Exception as e:  # noqa: BLE001 - the file is named, no traceback
            raise DataError(f"{spec.path}: row {i + 2}: {e}") from None
        if fmt != "array":
            image = preprocess.decode_image(dict(image=image, image_format=fmt))
        s = sets.setdefault(tuple(wl), ([], []))
        s[0].append(image)
        s[1].append(names.index(str(r["label"])))
    return [(ims, np.asarray(wl), np.asarray(labels)) for wl, (ims, labels) in sets.items()], names


def classify_sets(model, sets, classes, templates=TEMPLATES, batch_size=16, ks=(1, 3)):
    """`classify` over several band sets at once (one classifier), scores over all images."""
    cls = classifier(model, classes, templates)
    logits, labels = [], []
    for images, wavelengths, lab in sets:
        logits.append(_encode_images(model, images, wavelengths, batch_size) @ cls.T)
        labels.append(np.asarray(lab))
    return scores(np.concatenate(logits), np.concatenate(labels), classes, ks)


def scores(logits, labels, classes, ks=(1, 3)):
    order = np.argsort(-logits, axis=1)
    out = {f"top{k}": float(np.mean([labels[i] in order[i, :k] for i in range(len(labels))])) for k in ks}
    out["per_class_top1"] = {c: float(np.mean(order[labels == k, 0] == k)) for k, c in enumerate(classes)
                             if np.any(labels == k)}
    out["count"] = int(len(labels))
    return out


def _encode_images(model, images, wavelengths, batch_size):
    """N uint8 images [H_i, W_i, C] of one band set (an array or a list) → normalised embeddings [N, D]."""
    cfg = model.cfg
    s, c = cfg.image.image_size, images[0].shape[-1]
    cb = bucket(c, cfg.band_buckets)
    wl = np.zeros(cb, np.float32)
    wl[:c] = wavelengths
    valid = np.arange(cb) < c
    f = jax.jit(lambda m, x, w, v: m.encode_image(x, w, v)[0])
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i:i + batch_size]
        x = np.zeros((batch_size, s, s, cb), np.float32)
        for j, im in enumerate(chunk):
            x[j, ..., :c] = model_pixels(im, (0, 0, im.shape[1], im.shape[0]), s)
        out.append(np.asarray(f(model, jnp.asarray(x), jnp.asarray(wl), jnp.asarray(valid)))[:len(chunk)])
    return np.concatenate(out)


def encode_texts(model, texts, batch_size=64):
    cfg = model.cfg
    tok = make_tokenizer(cfg.tokenizer, cfg.text.context_length)
    f = jax.jit(lambda m, t: m.encode_text(t))
    out = []
    for i in range(0, len(texts), batch_size):
        ids = tok(list(texts[i:i + batch_size]))
        pad = np.zeros((batch_size, ids.shape[1]), np.int32)
        pad[:len(ids)] = ids
        out.append(np.asarray(f(model, jnp.asarray(pad)))[:len(ids)])
    return np.concatenate(out)


def classifier(model, classes, templates=TEMPLATES):
    """[K, D]: per class, the re-normalised mean of its templates' text embeddings."""
    emb = encode_texts(model, [t.format(c) for c in classes for t in templates]).reshape(
        len(classes), len(templates), -1).mean(1)
    return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


def classify(model, images, wavelengths, labels, classes, templates=TEMPLATES, batch_size=16, ks=(1, 3)):
    """Zero-shot top-k accuracy. images uint8 [N, H, W, C] (one band set), wavelengths [C] µm, labels [N]."""
    return classify_sets(model, [(images, wavelengths, labels)], classes, templates, batch_size, ks)


def _pair_records(pairs_dir):
    from geolink_jax.data import outputs, shards
    from geolink_jax.dofa_clip.preprocess import decode

    manifest = outputs.load_manifest(pairs_dir)
    return [r for p in shards.manifest_shards(pairs_dir, manifest) for r in shards.read_shard(p, decode)]


def encode_pair_images(model, records, batch_size=16):
    """Pair records (any band sets) → image embeddings [N, D], batched by band set."""
    from geolink_jax.dofa_clip.preprocess import decode_image

    groups = {}
    for i, r in enumerate(records):
        groups.setdefault(tuple(np.round(np.asarray(r["wavelengths"], np.float64), 6)), []).append(i)
    img = np.zeros((len(records), model.cfg.image.width), np.float32)
    for wl, idx in groups.items():
        img[idx] = _encode_images(model, [decode_image(records[i]) for i in idx], np.asarray(wl), batch_size)
    return img


def retrieval(model, pairs_dir, batch_size=16, ks=(1, 5, 10)):
    """Image ↔ caption recall@k over a pair shard directory (any band sets)."""
    records = _pair_records(pairs_dir)
    img = encode_pair_images(model, records, batch_size)
    txt = encode_texts(model, [r["caption"] for r in records])
    sim = img @ txt.T
    return dict(image_to_text=recall_at_k(sim, ks), text_to_image=recall_at_k(sim.T, ks), count=len(records))


def embed_pairs(model, pairs_dir, texts_path=None, batch_size=16):
    """Rows {kind: pair | text, id, caption, wavelengths, image, text} of a pair shard directory (and the lines of a
    text file): normalised image and caption embeddings."""
    records = _pair_records(pairs_dir)
    img = encode_pair_images(model, records, batch_size)
    txt = encode_texts(model, [r["caption"] for r in records])
    rows = [dict(kind="pair", id=r["pair_id"], caption=r["caption"],
                 wavelengths=[float(w) for w in r["wavelengths"]], image=i.tolist(), text=t.tolist())
            for r, i, t in zip(records, img, txt)]
    if texts_path:
        lines = [ln.strip() for ln in open(texts_path, encoding="utf-8") if ln.strip()]
        rows += [dict(kind="text", id=f"text/{k}", caption=line, wavelengths=None, image=None, text=t.tolist())
                 for k, (line, t) in enumerate(zip(lines, encode_texts(model, lines) if lines else []))]
    return rows


def write_parquet(rows, path):
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)


def write_report(report, path):
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
