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

from geolink_jax.data import pipeline, record_format, shards
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES
from geolink_jax.osm.osm_graph import TileGraph
from geolink_jax.tiles.augment import AugmentConfig, augment, augment_for_device, place_on_canvas, resize_only
from geolink_jax.tiles.graph_batch import GraphBatch, GraphBudget, fit_to_budget, pad_fitted, round_up


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


@dataclasses.dataclass(frozen=True)
class TilePipelineConfig:
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

    def __init__(self, cfg: TilePipelineConfig):
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


def pipeline_config(config, manifest, image_size, graphs=True, process_count=1):
    """The run config's data block (+ this process's share of the batch, graph budgets from the manifest) →
    TilePipelineConfig."""
    d = config.data
    budget = GraphBudget.from_manifest(manifest, d.budget_stat) if graphs else GraphBudget.default()
    manifest_file = f"{d.path or 'the bundled data'}/manifest.json"
    return TilePipelineConfig(batch_size=config.batch_size // process_count, budget=budget, seed=config.seed,
                          worker_count=d.worker_count, read_threads=d.read_threads, graphs=graphs,
                          augment=AugmentConfig(image_size=image_size, faithful_crop=d.faithful_crop,
                                                draft_decode=d.draft_decode, on_device=d.augment_on_device),
                          canvas=canvas_size(manifest, d.canvas_size, source=manifest_file)
                          if d.augment_on_device else (0, 0))


def make_dataset(paths, cfg: TilePipelineConfig, process_index=0, process_count=1):
    """A grain IterDataset of per-host batches of tile samples from ArrayRecord shard paths (see
    `data.pipeline.batched`)."""
    return pipeline.batched(paths, DecodeAugmentPad(cfg), Collate(cfg.budget, cfg.canvas), cfg.batch_size,
                            train=cfg.train, seed=cfg.seed, read_threads=cfg.read_threads,
                            worker_count=cfg.worker_count, process_index=process_index, process_count=process_count)


def to_graph_batch(batch):
    """The batch dict's graph fields → GraphBatch (numpy or jax arrays alike)."""
    return GraphBatch(**batch["graph"])


def recipe_notes(config):
    """The recipe card's augmentation line of a tile run (GeoLink, MAE)."""
    d = config.data
    crop = "the reference's always-tall random resized crop" if d.faithful_crop else "random resized crop"
    where = "in the train step (on device)" if d.augment_on_device else "on the host"
    return {"augmentation": f"spec §5.2: {crop}, flip, colour jitter, the graph cropped with the image; {where}"}
