"""grain input pipeline over the preprocessed ArrayRecord shards.

source (ArrayRecord) → seeded global shuffle (reshuffled each epoch) → repeat → decode + augment + pad to the
static graph budget (a random map: per-element seeds derived from the pipeline seed) → this host's rows of each
global batch → batch → iterator (optionally multiprocess prefetch). The iterator's state is a small dict (grain
`get_state`/`set_state`), checkpointed with the model so that a resumed run continues with exactly the next batch.

A batch is a dict of numpy arrays: image float32 [B, S, S, 3] and graph = the fields of
`graph_batch.GraphBatch` with a leading B, plus per-sample stats (dropped nodes/edges). With on-device augmentation
(`augment.on_device`) the image is the decoded uint8 [B, Hc, Wc, 3] canvas and `augment` holds the draws that the
train step applies (`device_augment`).
"""

import dataclasses

import grain
import numpy as np

from geolink_jax.data import record_format, shards
from geolink_jax.data.augment import AugmentConfig, augment, augment_for_device, place_on_canvas, resize_only
from geolink_jax.data.graph_batch import GraphBatch, GraphBudget, fit_to_budget, pad_fitted, round_up
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES
from geolink_jax.osm.osm_graph import TileGraph


def tile_graph_from_record(record, lean=False):
    """Decoded tile record → TileGraph; lean=True leaves out the label strings and edge attributes (None), which the
    model never reads."""
    return TileGraph(
        features={t: np.asarray(record[f"x_{t}"], np.float32) for t in NODE_TYPES},
        positions={t: np.asarray(record[f"pos_{t}"], np.float32) for t in NODE_TYPES},
        labels={t: list(record.get(f"labels_{t}", [""] * len(record[f"x_{t}"]))) for t in NODE_TYPES}
        if not lean else None,
        edge_index={r: np.asarray(record[f"edge_index_{r}"]).reshape(2, -1) for r in RELATION_NAMES},
        edge_attr=None if lean else {r: np.asarray(record[f"edge_attr_{r}"]) for r in RELATION_NAMES},
    )


MIN_SHUFFLE_SIZE = 1 << 16


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    batch_size: int  # per host
    budget: GraphBudget
    augment: AugmentConfig = AugmentConfig()
    train: bool = True  # False: no shuffle-time augmentation (resize only)
    seed: int = 0
    worker_count: int = 0  # >0: grain multiprocess prefetch
    read_threads: int = 2  # grain reader threads per process (batches prefetched: 2 per thread)
    graphs: bool = True  # False: images only (no graph decoding, padding or stats)
    canvas: tuple = (0, 0)  # (height, width) of the uint8 canvas of on-device augmentation


def canvas_size(manifest, size=0, multiple=32, source="the data's manifest.json"):
    """The on-device augmentation canvas (height, width): `size` (square) if given, else the manifest's largest
    decoded image, rounded up to `multiple`. Larger images are decoded at a reduced scale to fit. A manifest without
    image sizes (made before on-device augmentation) is a DataError naming `source`."""
    if size:
        return int(size), int(size)
    if not manifest or "image_size" not in manifest:
        raise shards.DataError(f"{source}: records no image sizes (made before on-device augmentation): preprocess "
                               "the tiles again, or set --config.data.canvas_size")
    return tuple(round_up(manifest["image_size"][k]["max"], multiple) for k in ("height", "width"))


class DecodeAugmentPad(grain.transforms.RandomMap):
    """bytes → sample dict: image (+ augment draws), graph (a TileGraph within the budget) and stats; or only the
    image (+ draws)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    def random_map(self, data, rng):
        record = record_format.decode(data)
        image = record_format.open_image(record)  # lazy: augment may decode a JPEG at a reduced scale
        graph = tile_graph_from_record(record, lean=True) if self.cfg.graphs else None
        out = {}
        if self.cfg.train and self.cfg.augment.on_device:
            # the graph goes whole (padded): the step crops and flips it with the image
            out["image"], out["augment"] = augment_for_device(image, rng, self.cfg.augment, self.cfg.canvas)
        elif self.cfg.train:
            out["image"], graph = augment(image, graph, rng, self.cfg.augment)
        else:
            out["image"] = resize_only(image, self.cfg.augment.image_size)
        if graph is not None:  # fitted to the budget here (random drops need the rng), padded per batch
            out["graph"], out["stats"] = fit_to_budget(graph, self.cfg.budget, rng, record.get("tile_id", "?"))
        return out


class Collate:
    """Samples → a batch: arrays stacked, graphs padded into the batch's arrays at once (no per-sample padding and
    re-stacking), per-sample stats as int32 [B]."""

    def __init__(self, budget, canvas=None):
        self.budget, self.canvas = budget, canvas

    def __call__(self, samples):
        out = {}
        for key in samples[0]:
            values = [s[key] for s in samples]
            if key == "image" and "augment" in samples[0]:  # decoded images of any size → one canvas batch
                out[key] = place_on_canvas(values, self.canvas)
            elif key == "graph":
                padded = pad_fitted(values, self.budget)  # (dataclasses.asdict would deep-copy every array)
                out[key] = {f.name: getattr(padded, f.name) for f in dataclasses.fields(GraphBatch)}
            elif key == "stats":
                out[key] = {k: np.array([v[k] for v in values], np.int32) for k in values[0]}
            elif isinstance(values[0], dict):
                out[key] = {k: np.stack([v[k] for v in values]) for k in values[0]}
            else:
                out[key] = np.stack(values)
        return out


def pipeline_config(config, manifest, image_size, graphs=True):
    """The run config's data block (+ per-host batch, graph budgets from the manifest) → PipelineConfig."""
    import jax

    d = config.data
    budget = GraphBudget.from_manifest(manifest, d.budget_stat) if graphs else GraphBudget.default()
    manifest_file = f"{d.path or 'the bundled data'}/manifest.json"
    return PipelineConfig(batch_size=config.batch_size // jax.process_count(), budget=budget, seed=config.seed,
                          worker_count=d.worker_count, read_threads=d.read_threads, graphs=graphs,
                          augment=AugmentConfig(image_size=image_size, faithful_crop=d.faithful_crop,
                                                draft_decode=d.draft_decode, on_device=d.augment_on_device),
                          canvas=canvas_size(manifest, d.canvas_size, source=manifest_file)
                          if d.augment_on_device else (0, 0))


class ProcessRows(grain.MapDataset):
    """This process's rows of each global batch of the parent stream: global batch k is elements [k·B, (k+1)·B),
    and process p of n reads rows [p·b, (p+1)·b) of it (B = n·b). Every process count therefore trains on the same
    global batches, row for row, and each process decodes only its own rows."""

    def __init__(self, parent, process_index, process_count, rows):
        super().__init__(parent)
        self._stream, self._rows, self._offset = parent, rows, process_index * rows
        self._global_rows = process_count * rows

    def __len__(self):
        return len(self._stream) // self._global_rows * self._rows

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self._rows)
        return self._stream[batch * self._global_rows + self._offset + row]

    def __str__(self):
        return f"ProcessRows(rows {self._offset}..{self._offset + self._rows} of {self._global_rows})"


def make_dataset(paths, cfg: PipelineConfig, process_index=0, process_count=1):
    """A grain IterDataset of per-host batches of tile samples from ArrayRecord shard paths (see `batched`)."""
    return batched(paths, DecodeAugmentPad(cfg), Collate(cfg.budget, cfg.canvas), cfg.batch_size, train=cfg.train,
                   seed=cfg.seed, read_threads=cfg.read_threads, worker_count=cfg.worker_count,
                   process_index=process_index, process_count=process_count)


def batched(paths, transform, batch_fn, batch_size, *, train, seed, read_threads, worker_count, process_index=0,
            process_count=1):
    """The chain every family's pipeline runs: records → `transform` (a grain RandomMap) → per-host batches
    (`batch_fn`, None: stacked) → iterator (reader threads, optional worker processes).

    Training: one global stream (seeded shuffle, repeated, per-element seeds) that every process builds alike; each
    process takes its rows of every global batch (`ProcessRows`). So the run is the same on any number of
    processes, and the iterator's position is the step count. Evaluation: each process reads every n-th record."""
    ds = grain.MapDataset.source(shards.ShardSource(paths))
    if train:
        if len(ds) < MIN_SHUFFLE_SIZE:
            # grain's index_shuffle costs ~1/n per read (4 ms at n=5, 42 us at 1024, 11 us from 65536 on): shuffle
            # small sets k epochs at a time instead (each record still appears exactly k times per k epochs).
            ds = ds.repeat(-(-MIN_SHUFFLE_SIZE // max(len(ds), 1)))
        ds = ds.seed(seed).shuffle().repeat().random_map(transform)
        if process_count > 1:
            ds = ProcessRows(ds, process_index, process_count, batch_size)
    else:
        ds = ds[process_index::process_count].seed(seed).random_map(transform)
    ds = ds.batch(batch_size, drop_remainder=train, batch_fn=batch_fn)
    # Reader threads overlap JPEG decoding and resizing (which release the GIL); the per-sample graph work holds it.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(
        2 * read_threads, 1)))
    if worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; as a library we may run outside absl.app
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=worker_count))
    return it_ds


def to_graph_batch(batch):
    """The batch dict's graph fields → GraphBatch (numpy or jax arrays alike)."""
    return GraphBatch(**batch["graph"])
