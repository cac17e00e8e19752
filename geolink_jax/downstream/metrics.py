"""Segmentation metrics from a confusion matrix (spec §5.3: the reference's `intersectionAndUnion` and `F1Score`).

`confusion_matrix` runs under jit (static shapes; pixels whose target is outside [0, K) — the ignore value 255 —
are dropped); `scores` turns the accumulated [K, K] matrix (rows = target, columns = prediction) into per-class
IoU, precision, recall and F1. Means are over the classes that occur (union > 0 for IoU; target or prediction
present for F1), so a class absent from a small evaluation set does not count as a zero.
"""

import jax.numpy as jnp
import numpy as np


def confusion_matrix(pred, target, num_classes):
    """pred, target int [...] → int32 [K, K] counts, conf[t, p]; targets outside [0, K) are ignored."""
    k = num_classes
    pred, target = pred.reshape(-1).astype(jnp.int32), target.reshape(-1).astype(jnp.int32)
    valid = (target >= 0) & (target < k) & (pred >= 0) & (pred < k)
    idx = jnp.where(valid, target * k + pred, k * k)  # invalid pixels land in an extra bin that is cut off
    return jnp.bincount(idx, length=k * k + 1)[:-1].reshape(k, k).astype(jnp.int32)


def scores(conf, class_names=None):
    """[K, K] confusion → dict: iou, precision, recall, f1 (lists, NaN where undefined), miou, mean_f1,
    pixel_accuracy, and `classes` (names)."""
    conf = np.asarray(conf, np.float64)
    k = conf.shape[0]
    tp = np.diag(conf)
    target_n, pred_n = conf.sum(1), conf.sum(0)
    union = target_n + pred_n - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        precision = np.where(pred_n > 0, tp / pred_n, np.nan)
        recall = np.where(target_n > 0, tp / target_n, np.nan)
        f1 = np.where(target_n + pred_n > 0, 2 * tp / (target_n + pred_n), np.nan)  # = 2PR/(P+R), 0 if tp = 0
    total = conf.sum()
    return dict(
        classes=list(class_names) if class_names else [str(i) for i in range(k)],
        iou=iou.tolist(), precision=precision.tolist(), recall=recall.tolist(), f1=f1.tolist(),
        miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        mean_f1=float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan"),
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
    )


def classification_scores(target, pred, num_classes):
    """Labels and predictions int [N] → accuracy, macro F1 (over the classes in target or prediction, as sklearn's
    f1_score(average="macro")), per-class F1 and the confusion matrix (rows = target)."""
    target, pred = np.asarray(target, np.int64), np.asarray(pred, np.int64)
    conf = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(conf, (target, pred), 1)
    s = scores(conf)
    present = (conf.sum(0) + conf.sum(1)) > 0
    f1 = np.nan_to_num(np.asarray(s["f1"], np.float64))
    return dict(accuracy=float((target == pred).mean()) if len(target) else float("nan"),
                macro_f1=float(f1[present].mean()) if present.any() else float("nan"), f1=s["f1"],
                confusion=conf.tolist())


def multilabel_scores(target, scores, threshold=0.5):
    """0/1 targets and scores [N, K] → mAP (macro average precision over the classes with a positive in target, as
    sklearn's average_precision_score on those columns), micro and macro F1 of scores ≥ threshold (sklearn's
    f1_score, zero_division 0)."""
    target, scores = np.asarray(target, bool), np.asarray(scores, np.float64)
    ap = []
    for k in np.flatnonzero(target.any(0)):
        order = np.argsort(-scores[:, k], kind="stable")
        s, t = scores[order, k], target[order, k]
        last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last of each run of tied scores
        tp = np.cumsum(t)[last]
        precision, recall = tp / (last + 1), tp / t.sum()
        ap.append(float(np.sum(np.diff(np.r_[0.0, recall]) * precision)))
    pred = scores >= threshold
    tp, fp, fn = (pred & target).sum(0), (pred & ~target).sum(0), (~pred & target).sum(0)
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    return dict(map=float(np.mean(ap)) if ap else float("nan"), micro_f1=float(micro), macro_f1=float(f1.mean()))


def regression_scores(target, pred):
    """→ rmse, mae, r2 (1 − SS_res / SS_tot, as sklearn's r2_score)."""
    target, pred = np.asarray(target, np.float64), np.asarray(pred, np.float64)
    res = target - pred
    ss_tot = ((target - target.mean()) ** 2).sum()
    return dict(rmse=float(np.sqrt((res ** 2).mean())), mae=float(np.abs(res).mean()),
                r2=float(1 - (res ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"))


def recall_at_k(sim, ks=(1, 5, 10)):
    """sim [N, N] (row i's positive is column i) → {k: recall@k}; a tie with the positive counts in its favour
    (identical captions score identically)."""
    ranks = (sim > np.diag(sim)[:, None]).sum(1)  # how many score above the positive
    return {k: float(np.mean(ranks < k)) for k in ks}


UFZ_CLASSES = ("water", "green space", "farmland", "undeveloped land", "residential area", "commercial area",
               "institutional area", "industrial area", "transportation")
