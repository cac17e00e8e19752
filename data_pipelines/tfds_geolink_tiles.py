"""TFDS builder `geolink_tiles`: the preprocessed shards as a TensorFlow Datasets dataset (file_format array_record).

The builder re-emits the records of a `geolink-jax preprocess` output directory (given as TFDS's manual_dir), one
example per tile with the same arrays, so `tfds.data_source('geolink_tiles/<config>', data_dir=…)` opens it with
random access and no TensorFlow. Configs are named by tag-feature width: `features_384` (e5), `features_512`
(clip, the bundled UFZ graphs, hash), … The manifest's feature width must match the config.

    import tensorflow_datasets as tfds
    from data_pipelines import tfds_geolink_tiles  # registers the builder
    builder = tfds_geolink_tiles.GeolinkTiles(config="features_384", data_dir=DATA_DIR, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=SHARDS_DIR))
    source = tfds.data_source("geolink_tiles/features_384", data_dir=DATA_DIR)["train"]
"""
import numpy as np
import tensorflow_datasets as tfds

from geolink_jax.data import outputs
from geolink_jax.osm import EDGE_ATTR_DIM, NODE_TYPES, POSITION_DIM, RELATIONS, relation_name
from geolink_jax.tiles import job as preprocess

FEATURE_WIDTHS = (16, 32, 64, 128, 256, 384, 512, 768, 1024)


class GeolinkTilesConfig(tfds.core.BuilderConfig):
    def __init__(self, feature_dim, **kwargs):
        super().__init__(name=f"features_{feature_dim}", description=f"{feature_dim}-d tag features", **kwargs)
        self.feature_dim = feature_dim


class GeolinkTiles(tfds.core.GeneratorBasedBuilder):
    """Image tiles with their OSM heterogeneous graphs (geolink_jax record format v1)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "geolink_jax tile record format version 1."}
    BUILDER_CONFIGS = [GeolinkTilesConfig(d) for d in FEATURE_WIDTHS]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Run `geolink-jax preprocess --out DIR …` and pass DIR as manual_dir "
        "(tfds.download.DownloadConfig(manual_dir=DIR)).")

    def _info(self):
        d = self.builder_config.feature_dim
        f = tfds.features
        features = {
            "tile_id": f.Text(),
            "image": f.Tensor(shape=(), dtype=np.object_),
            "image_format": f.Text(),
            "image_size": f.Tensor(shape=(2,), dtype=np.int32),
            # bytes encoding: tf.train.Example would narrow float64 to float32.
            "bbox_lonlat": f.Tensor(shape=(4,), dtype=np.float64, encoding="bytes"),
            "crs": f.Text(),
        }
        for t in NODE_TYPES:
            features[f"x_{t}"] = f.Tensor(shape=(None, d), dtype=np.float32)
            features[f"pos_{t}"] = f.Tensor(shape=(None, POSITION_DIM[t]), dtype=np.float32)
            features[f"labels_{t}"] = f.Tensor(shape=(None,), dtype=np.object_)
        for s, t in RELATIONS:
            r = relation_name(s, t)
            features[f"edge_index_{r}"] = f.Tensor(shape=(2, None), dtype=np.int32)
            features[f"edge_attr_{r}"] = f.Tensor(shape=(None, EDGE_ATTR_DIM[(s, t)]), dtype=np.uint8)
        return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict(features),
                                     description=__doc__.split("\n\n")[0])

    def _split_generators(self, dl_manager):
        shards_dir = dl_manager.manual_dir
        manifest = outputs.load_manifest(shards_dir)
        if manifest["feature_dim"] != self.builder_config.feature_dim:
            raise ValueError(f"{shards_dir}/manifest.json: feature_dim {manifest['feature_dim']} does not match "
                             f"config {self.builder_config.name}")
        return {"train": self._generate_examples(shards_dir)}

    def _generate_examples(self, shards_dir):
        for rec in preprocess.read_records(shards_dir):
            yield rec["tile_id"], to_example(rec, self.info.features.keys())


def to_example(record, keys):
    """A decoded record → the builder's example dict (label lists become object arrays)."""
    out = {}
    for k in keys:
        v = record[k]
        out[k] = np.asarray(v, dtype=object) if k.startswith("labels_") else v
    return out
