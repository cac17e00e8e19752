"""grain input pipeline over the preprocessed ArrayRecord shards.

source (ArrayRecord) → seeded global shuffle (reshuffled each epoch) → repeat → decode + augment + pad to the
static graph budget (a random map: per-element seeds derived from the pipeline seed) → this host's rows of each
global batch → batch → iterator (optionally multiprocess prefetch). The iterator's state is a small dict (grain
`get_state`/`set_state`), checkpointed with the model so that a resumed run continues with exactly the next batch.

A batch is a dict of numpy arrays: image float32 [B, S, S, 3] and graph = the fields of
`graph_batch.GraphBatch` with a leading B, plus per-sample stats (dropped nodes/edges).
"""

import dataclasses

import grain
import numpy as np

from geolink_jax.data import record_format, shards
from geolink_jax.data.augment import AugmentConfig, augment, resize_only
from geolink_jax.data.graph_batch import GraphBatch, GraphBudget, pad_graphs
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


MIN_SHUFFLE_SIZE = 1024


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


class DecodeAugmentPad(grain.transforms.RandomMap):
    """bytes → padded sample dict (image, graph fields with no batch axis, stats; or only the image)."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    def random_map(self, data, rng):
        record = record_format.decode(data)
        image = record_format.open_image(record)  # lazy: augment may decode a JPEG at a reduced scale
        if not self.cfg.graphs:
            image = augment(image, None, rng, self.cfg.augment)[0] if self.cfg.train else resize_only(
                image, self.cfg.augment.image_size)
            return dict(image=image)
        graph = tile_graph_from_record(record, lean=True)
        if self.cfg.train:
            image, graph = augment(image, graph, rng, self.cfg.augment)
        else:
            image = resize_only(image, self.cfg.augment.image_size)
        padded, stats = pad_graphs([graph], self.cfg.budget, rng=rng, names=[record.get("tile_id", "?")])
        graph_fields = {f.name: {k: v[0] for k, v in getattr(padded, f.name).items()}
                        for f in dataclasses.fields(GraphBatch)}
        return dict(image=image, graph=graph_fields,
                    stats={k: np.int32(v) for k, v in stats.items()})


def pipeline_config(config, manifest, image_size, graphs=True):
    """The run config's data block (+ per-host batch, graph budgets from the manifest) → PipelineConfig."""
    import jax

    d = config.data
    budget = GraphBudget.from_manifest(manifest, d.budget_stat) if graphs else GraphBudget.default()
    return PipelineConfig(batch_size=config.batch_size // jax.process_count(), budget=budget, seed=config.seed,
                          worker_count=d.worker_count, read_threads=d.read_threads, graphs=graphs,
                          augment=AugmentConfig(image_size=image_size, faithful_crop=d.faithful_crop,
                                                draft_decode=d.draft_decode))


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
    """A grain IterDataset of per-host batches from ArrayRecord shard paths.

    Training: one global stream (seeded shuffle, repeated, augmented with per-element seeds) that every process
    builds alike; each process takes its rows of every global batch (`ProcessRows`). So the run is the same on any
    number of processes, and the iterator's position is the step count. Evaluation: each process reads every n-th
    record."""
    ds = grain.MapDataset.source(shards.ShardSource(paths))
    if cfg.train:
        if len(ds) < MIN_SHUFFLE_SIZE:
            # grain's index_shuffle costs ~1/n per read (4 ms at n=5, 10 us at n=1e5): shuffle small sets k epochs
            # at a time instead (each record still appears exactly k times per k epochs).
            ds = ds.repeat(-(-MIN_SHUFFLE_SIZE // max(len(ds), 1)))
        ds = ds.seed(cfg.seed).shuffle().repeat().random_map(DecodeAugmentPad(cfg))
        if process_count > 1:
            ds = ProcessRows(ds, process_index, process_count, cfg.batch_size)
    else:
        ds = ds[process_index::process_count].seed(cfg.seed).random_map(DecodeAugmentPad(cfg))
    ds = ds.batch(cfg.batch_size, drop_remainder=cfg.train)
    # Reader threads overlap JPEG decoding and resizing (which release the GIL); the per-sample graph work holds it.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=max(
        2 * cfg.read_threads, 1)))
    if cfg.worker_count > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; as a library we may run outside absl.app
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(grain.multiprocessing.MultiprocessingOptions(num_workers=cfg.worker_count))
    return it_ds


def to_graph_batch(batch):
    """The batch dict's graph fields → GraphBatch (numpy or jax arrays alike)."""
    return GraphBatch(**batch["graph"])
