"""Evaluation protocols: what is trained (if anything) on an encoder's features of a task, and what is scored.

    metrics = run(protocol, task, inputs, fraction, seed, settings)

`inputs` gives the encoder's outputs for the task: `inputs.features(output, which="images" | "after")` (cached
arrays, see downstream/features.py for the outputs), `inputs.text(strings)` (normalised text embeddings: zero-shot,
retrieval) and `inputs.encoder()` (the FeatureFn itself: fine-tuning). Protocols per task kind:

  classification  knn (cosine, exp(s/T) votes), linear (logistic regression), finetune (the whole encoder and a
                  linear head, AdamW with layer-wise lr decay), zeroshot (class prompts through the text tower)
  multilabel      knn (vote-weighted label mean), linear (per-class sigmoids): mAP, micro/macro F1
  regression      knn (vote-weighted mean), linear (ridge): RMSE, MAE, R²
  segmentation    linear_seg (a linear classifier per pixel on the frozen final map, nearest-upsampled), upernet
                  (UperNet trained on the frozen encoder's four levels): mIoU, pixel accuracy, mean F1
  change          linear_change (siamese: a linear classifier per pixel on [|f(a) − f(b)|, f(a), f(b)]): F1 and IoU
                  of the change class
  retrieval       retrieval (image ↔ caption recall@1/5/10 in the image–text space; nothing trained)
`fraction` < 1 trains on that share of the training labels (per class for classification), drawn with `seed`.
"""

import numpy as np

from geolink_jax.downstream import metrics, probe
from geolink_jax.downstream.tasks import IGNORE

PROTOCOLS = {
    "classification": ("knn", "linear", "finetune", "zeroshot"),
    "multilabel": ("knn", "linear"),
    "regression": ("knn", "linear"),
    "segmentation": ("linear_seg", "upernet"),
    "change": ("linear_change",),
    "retrieval": ("retrieval",),
}
TRAINING_FREE = ("zeroshot", "retrieval")  # one cell per task and encoder: label fractions do not apply
PRIMARY = {"classification": "accuracy", "multilabel": "map", "regression": "rmse", "segmentation": "miou",
           "change": "change_f1", "retrieval": "recall@1"}
TEMPLATES = ("a satellite image of {}.", "an aerial image of {}.", "a remote sensing image of {}.",
             "a satellite photo of the {}.", "an overhead view of {}.")  # CLIP-style (DOFA-CLIP's zeroshot too)
SETTINGS = dict(knn_k=20, finetune_steps=100, finetune_lr=5e-4, layer_decay=0.75, finetune_batch=32,
                upernet_steps=200, upernet_channels=128, upernet_lr=1e-3, prompt_templates=TEMPLATES)


def subsample(labels, train, fraction, seed):
    """`fraction` of each class's training samples (at least one), drawn with `seed`; multi-label and regression
    labels: of all training samples."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng(seed)
    keep = np.zeros_like(train)
    groups = [train & (labels == c) for c in np.unique(labels[train])] if labels.ndim == 1 and \
        np.issubdtype(labels.dtype, np.integer) else [train]
    for g in groups:
        idx = rng.permutation(np.flatnonzero(g))
        keep[idx[:max(1, int(round(len(idx) * fraction)))]] = True
    return keep


def subsample_pixels(train, fraction, seed):
    """`fraction` of the labelled training pixels (bool mask of any shape), drawn with `seed`."""
    if fraction >= 1.0:
        return train
    idx = np.flatnonzero(train)
    keep = np.random.default_rng(seed).permutation(len(idx))[:max(1, int(round(len(idx) * fraction)))]
    out = np.zeros(train.size, bool)
    out[idx[keep]] = True
    return out.reshape(train.shape)


def upsample_nearest(grid, size):
    """Feature maps [N, h, w, D] → [N, size, size, D]: each pixel takes the cell that covers it."""
    h, w = grid.shape[1:3]
    rows = np.minimum(np.arange(size) * h // size, h - 1)
    cols = np.minimum(np.arange(size) * w // size, w - 1)
    return grid[:, rows][:, :, cols]


def run(protocol, task, inputs, fraction, seed, settings):
    """One cell → its metrics (a dict of numbers; the task kind's PRIMARY metric among them)."""
    settings = {**SETTINGS, **settings}
    allowed = PROTOCOLS[task.kind]
    if protocol not in allowed:
        raise ValueError(f"protocol {protocol} does not apply to {task.kind} tasks ({task.kind} takes "
                         f"{', '.join(allowed)})")
    return globals()[f"_{task.kind}"](protocol, task, inputs, fraction, seed, settings)


def _classification(protocol, task, inputs, fraction, seed, settings):
    y = task.labels
    if protocol == "zeroshot":
        prompts = [t.format(c) for c in task.classes for t in settings["prompt_templates"]]
        text = inputs.text(prompts).reshape(len(task.classes), len(settings["prompt_templates"]), -1).mean(1)
        text /= np.linalg.norm(text, axis=-1, keepdims=True)
        pred = (inputs.features("embedding")[task.test] @ text.T).argmax(1)
        train = np.zeros_like(task.test)
    else:
        train = subsample(y, ~task.test, fraction, seed)
        if protocol == "finetune":
            from geolink_jax.downstream import finetune

            pred = finetune.classifier(inputs.encoder(), task.images[train], y[train], task.images[task.test],
                                       task.num_classes, steps=settings["finetune_steps"],
                                       lr=settings["finetune_lr"], layer_decay=settings["layer_decay"],
                                       batch_size=settings["finetune_batch"], seed=seed)
        else:
            x = inputs.features("pooled")
            if protocol == "knn":
                pred = probe.knn(x[train], y[train], x[task.test], task.num_classes, k=settings["knn_k"])
            else:
                pred, _ = probe.linear_probe(x[train], y[train], x[task.test], task.num_classes, seed=seed)
    s = metrics.classification_scores(y[task.test], pred, task.num_classes)
    return dict(accuracy=s["accuracy"], macro_f1=s["macro_f1"], n_train=int(train.sum()), n_test=int(task.test.sum()))


def _multilabel(protocol, task, inputs, fraction, seed, settings):
    x, y = inputs.features("pooled"), task.labels.astype(np.float32)
    train = subsample(task.labels, ~task.test, fraction, seed)
    if protocol == "knn":
        scores = probe.knn_mean(x[train], y[train], x[task.test], k=settings["knn_k"])
    else:
        scores, _ = probe.linear_probe(x[train], y[train], x[task.test], task.num_classes, seed=seed,
                                       multilabel=True)
    return dict(**metrics.multilabel_scores(task.labels[task.test], scores), n_train=int(train.sum()),
                n_test=int(task.test.sum()))


def _regression(protocol, task, inputs, fraction, seed, settings):
    x, y = inputs.features("pooled"), task.labels
    train = subsample(y, ~task.test, fraction, seed)
    if protocol == "knn":
        pred = probe.knn_mean(x[train], y[train], x[task.test], k=settings["knn_k"])
    else:
        pred = probe.ridge(x[train], y[train], x[task.test])
    return dict(**metrics.regression_scores(y[task.test], pred), n_train=int(train.sum()),
                n_test=int(task.test.sum()))


def _pixel_linear(x, labels, test, num_classes, fraction, seed):
    """A linear classifier per pixel: x [N, H, W, D], labels [N, H, W] (IGNORE unlabelled) → (confusion, n_train,
    n_test)."""
    labelled = labels != IGNORE
    train = subsample_pixels(labelled & ~test[:, None, None], fraction, seed)
    scored = labelled & test[:, None, None]
    pred, _ = probe.linear_probe(x[train], labels[train], x[scored], num_classes, seed=seed)
    return metrics.confusion_matrix(pred, labels[scored], num_classes), int(train.sum()), int(scored.sum())


def _segmentation(protocol, task, inputs, fraction, seed, settings):
    size = task.labels.shape[1]
    if protocol == "linear_seg":
        conf, n_train, n_test = _pixel_linear(upsample_nearest(inputs.features("grid"), size), task.labels,
                                              task.test, task.num_classes, fraction, seed)
    else:
        conf, n_train, n_test = upernet_frozen(inputs.features("levels"), task, fraction, seed, settings)
    s = metrics.scores(conf)
    return dict(miou=s["miou"], accuracy=s["pixel_accuracy"], macro_f1=s["mean_f1"], n_train=n_train, n_test=n_test)


def _change(protocol, task, inputs, fraction, seed, settings):
    a, b = inputs.features("grid"), inputs.features("grid", which="after")
    x = upsample_nearest(np.concatenate([np.abs(a - b), a, b], -1), task.labels.shape[1])
    conf, n_train, n_test = _pixel_linear(x, task.labels, task.test, 2, fraction, seed)
    s = metrics.scores(conf)
    return dict(change_f1=float(np.nan_to_num(s["f1"][1])), change_iou=float(np.nan_to_num(s["iou"][1])),
                miou=s["miou"], accuracy=s["pixel_accuracy"], n_train=n_train, n_test=n_test)


def _retrieval(protocol, task, inputs, fraction, seed, settings):
    img = inputs.features("embedding")
    sim = img @ inputs.text(list(task.captions)).T
    i2t, t2i = metrics.recall_at_k(sim), metrics.recall_at_k(sim.T)
    out = {f"image_to_text_r{k}": v for k, v in i2t.items()} | {f"text_to_image_r{k}": v for k, v in t2i.items()}
    return {"recall@1": (i2t[1] + t2i[1]) / 2, **out, "n_test": len(img)}


def upernet_frozen(levels, task, fraction, seed, settings):
    """UperNet (downstream/upernet.py, the official head) trained on frozen feature levels ([N, 4, h, w, D] or four
    arrays [N, h, w, D_i]): AdamW, poly decay, cross-entropy over the labelled pixels (of `fraction` of the training
    tiles' pixels) → (confusion on the test tiles, n_train pixels, n_test pixels)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from geolink_jax.downstream.upernet import UperNet, UperNetConfig

    maps = [levels[:, i] for i in range(levels.shape[1])] if isinstance(levels, np.ndarray) else list(levels)
    labelled = task.labels != IGNORE
    train_px = subsample_pixels(labelled & ~task.test[:, None, None], fraction, seed)
    labels = np.where(train_px, task.labels, IGNORE)
    train_idx = np.flatnonzero((~task.test) & train_px.any((1, 2)))
    head = UperNet(UperNetConfig(in_channels=tuple(m.shape[-1] for m in maps), num_classes=task.num_classes,
                                 channels=settings["upernet_channels"]), rngs=nnx.Rngs(seed))
    head.train()
    graphdef, params, stats = nnx.split(head, nnx.Param, nnx.BatchStat)
    steps = settings["upernet_steps"]
    tx = optax.adamw(optax.polynomial_schedule(settings["upernet_lr"], 0.0, 0.9, max(steps, 1)), weight_decay=0.01)
    opt = tx.init(params)
    out_hw = task.labels.shape[1:3]
    batch = min(16, len(train_idx))

    @jax.jit
    def step(params, stats, opt, maps, y, key):
        def loss_fn(p):
            m = nnx.merge(graphdef, p, jax.tree.map(lambda v: v, stats))
            logits = m(maps, out_hw, dropout_key=key)
            valid = y != IGNORE
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, y, 0))
            return (ce * valid).sum() / jnp.maximum(valid.sum(), 1), nnx.state(m, nnx.BatchStat)

        (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), new_stats, opt

    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    for i in range(steps):
        idx = rng.choice(train_idx, batch, replace=len(train_idx) < batch)
        params, stats, opt = step(params, stats, opt, [jnp.asarray(m[idx]) for m in maps],
                                  jnp.asarray(labels[idx]), jax.random.fold_in(key, i))
    head.eval()
    model = nnx.merge(nnx.graphdef(head), params, stats)
    predict = jax.jit(lambda m, x: jnp.argmax(m(x, out_hw), -1))
    test_idx = np.flatnonzero(task.test)
    chunks = [np.resize(test_idx[i:i + batch], batch) for i in range(0, len(test_idx), batch)]  # one static shape
    pred = np.concatenate([np.asarray(predict(model, [jnp.asarray(m[c]) for m in maps]))
                           for c in chunks])[:len(test_idx)]
    target = np.where(labelled[test_idx], task.labels[test_idx], IGNORE)
    return (metrics.confusion_matrix(pred, target, task.num_classes), int(train_px.sum()),
            int(labelled[test_idx].sum()))
