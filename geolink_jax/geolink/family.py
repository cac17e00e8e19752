"""The GeoLink family (imagery + OpenStreetMap graphs; the model is geolink_jax.geolink.model, spec §3-§4).

Batch: image float32 [B, S, S, 3] (ImageNet-normalised) and graph = the GraphBatch fields with a leading B, padded
to the budgets of the manifest (`data.budget_stat`); the pipeline's per-sample stats (dropped nodes/edges) travel
beside it under "stats" and are summed into the log.
"""

import dataclasses

import jax
import numpy as np
from flax import nnx

from geolink_jax import family as family_lib
from geolink_jax.convert import timm as convert_timm
from geolink_jax.downstream import embed as embed_lib
from geolink_jax.geolink import commands, convert, flops
from geolink_jax.geolink.model import GeoLink, GeoLinkConfig
from geolink_jax.tiles import commands as tile_commands
from geolink_jax.tiles import device_augment, pipeline
from geolink_jax.tiles import job as preprocess
from geolink_jax.tiles.graph_batch import GraphBatch, GraphBudget, pad_graphs


def build(cfg, rngs):
    return GeoLink(cfg, rngs=rngs)


def loss(model, batch, key, ctx):
    image, graph = device_augment.step_inputs(batch, model.cfg.vit.image_size)
    return model.loss(image, GraphBatch(**graph), key, train=ctx.train, batch_groups=ctx.batch_groups)


def dataset(paths, manifest, config, model_cfg, process_index=0, process_count=1):
    cfg = pipeline.pipeline_config(config, manifest, model_cfg.vit.image_size, process_count=process_count)
    return pipeline.make_dataset(paths, cfg, process_index, process_count)


def default_data(config, workdir):
    return preprocess.bundled_tiles(f"{workdir}/data", config.data.encoder)


def model_fields_from_data(manifest):
    return {"osm_in_features": int(manifest["feature_dim"])} if "feature_dim" in manifest else {}


def budget(manifest, stat="max"):
    return GraphBudget.from_manifest(manifest, stat) if manifest else GraphBudget.default()


def abstract_batch(model_cfg, batch_size, manifest=None, data=None):
    v = model_cfg.vit
    one, _ = pad_graphs([], budget(manifest))  # field shapes without a batch axis come from an empty batch
    graph = jax.tree.map(lambda x: jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype), dataclasses.asdict(one))
    for t, x in graph["nodes"].items():  # an empty batch has no feature width: the model's
        graph["nodes"][t] = jax.ShapeDtypeStruct((batch_size, x.shape[1], model_cfg.osm_in_features), x.dtype)
    return dict(**device_augment.abstract_images(v, batch_size, manifest, data), graph=graph)


def varied_graphs(graphs, count, rng):
    """`count` random node subsets (30-100 % of each type) of the given graphs, cycled."""
    from geolink_jax.osm import NODE_TYPES

    out = []
    for i in range(count):
        g = graphs[i % len(graphs)]
        keep = {}
        for t in NODE_TYPES:
            n = g.num_nodes(t)
            k = int(rng.integers(int(0.3 * n), n + 1)) if n else 0
            keep[t] = np.sort(rng.choice(n, k, replace=False)) if k else np.zeros(0, np.int64)
        out.append(g.subgraph(keep))
    return out


def example_graphs(batch_size, seed=0):
    """The bundled UFZ graphs (real OSM, 512-d CLIP tag features) cycled to batch_size; seed > 0: random node
    subsets of them, so node and edge counts differ from seed to seed."""
    from geolink_jax.osm import osm_graph

    graphs = osm_graph.sample_ufz_graphs()
    if seed:
        return varied_graphs(graphs, batch_size, np.random.default_rng(seed))
    return (graphs * batch_size)[:batch_size]


def example_batch(model_cfg, batch_size, seed=0):
    """example_graphs padded to the default budget, and N(0, 1) images."""
    graph, _ = pad_graphs(example_graphs(batch_size, seed), GraphBudget.default())
    v = model_cfg.vit
    image = np.random.default_rng(seed).standard_normal((batch_size, v.image_size, v.image_size, v.in_channels),
                                                        np.float32)
    return dict(image=image, graph=dataclasses.asdict(graph))


def flops_per_sample(model_cfg, manifest=None):
    return flops.geolink_step_flops(model_cfg, budget(manifest).nodes).train_step


def pictures(model, host_batch, workdir, count=4):
    """workdir/reconstructions.png (original | masked | reconstruction per sample) and workdir/osm_graph.png (the
    first sample's graph on its image), from a host batch."""
    import pathlib

    from geolink_jax import pictures as pics

    n = min(count, len(host_batch["image"]))
    cfg = model.cfg
    images, graph = device_augment.host_step_inputs(host_batch, cfg.vit.image_size, n)
    graphdef, state = nnx.split(model)

    @jax.jit
    def outputs(state):
        _, aux = nnx.merge(graphdef, state).loss(images, GraphBatch(**graph), jax.random.key(0), train=False,
                                                 return_outputs=True)
        return aux["pred"], aux["mask"]

    pred, mask = jax.device_get(outputs(state))
    pics.save_figure(pics.reconstruction_figure(images, pred, mask, cfg.vit.patch_size, cfg.norm_pix_loss,
                                                "GeoLink image branch, final batch"),
                     pathlib.Path(workdir) / "reconstructions.png")
    one = jax.tree.map(lambda x: x[0], graph)
    pics.save_figure(pics.graph_picture(images[0], one["positions"], one["n_node"], one["senders"], one["receivers"],
                                        one["n_edge"], "OSM graph of the final batch's first tile (as trained: "
                                                       "cropped, flipped)"),
                     pathlib.Path(workdir) / "osm_graph.png")


# ------------------------------------------------------------------ weights
def _official_import(state_dict, cfg, source, heads=None, decoder_heads=16, fusion_heads=16):
    cfg = cfg or convert.infer_config(state_dict, heads, decoder_heads, fusion_heads)
    # every tensor comes from the file: shapes suffice, no initialisation
    target = family_lib.abstract_params(FAMILY, cfg)
    params, report = convert.params_from_official(state_dict, target, source=source)
    return params, cfg, report


def _timm_import(state_dict, cfg, source, heads=None, **_):
    cfg = cfg or convert.infer_config(state_dict, heads)
    params, report = convert.timm_into_fresh_model(state_dict, build(cfg, nnx.Rngs(0)), source)
    return params, cfg, report


def _official_arguments(p):
    convert_timm.head_arguments(p)
    p.add_argument("--decoder-heads", type=int, default=16, help="import without recorded config: MAE decoder heads")
    p.add_argument("--fusion-heads", type=int, default=16, help="import without recorded config: fusion heads")


CONVERTERS = {
    "official": family_lib.Converter(convert.official_state_dict, _official_import,
                                     "the official multimodal GeoLink state_dict (spec §3)", _official_arguments),
    "timm": family_lib.Converter(convert.timm_state_dict, _timm_import, "the image encoder as a timm VisionTransformer",
                                 convert_timm.head_arguments, convert_timm.export_metadata),
}


def _features(model, wavelengths_um, modality="image"):
    from geolink_jax.geolink import embed

    return embed.features(model, wavelengths_um, modality)


def _embed(model, tiles, batch_size=8, progress=True):
    from geolink_jax.geolink import embed

    return embed.embed(model, tiles, batch_size, progress)


def varied_batches(model_cfg, batch_size, count):
    """Random node subsets of the real UFZ graphs (example_batch with seeds 1…count); naive: each batch padded only
    to its own largest graph (the reference's dynamic shapes)."""
    padded, naive = [], []
    for i in range(count):
        host = example_batch(model_cfg, batch_size, seed=i + 1)
        graphs = example_graphs(batch_size, seed=i + 1)
        own = GraphBudget.covering(graphs, multiple=1)
        own = GraphBudget({k: max(1, v) for k, v in own.nodes.items()}, {k: max(1, v) for k, v in own.edges.items()})
        padded.append(host)
        naive.append(dict(image=host["image"], graph=dataclasses.asdict(pad_graphs(graphs, own)[0])))
    return family_lib.VariedBatches(padded, naive)


FAMILY = family_lib.Family(
    name="geolink",
    config_cls=GeoLinkConfig,
    build=build,
    loss=loss,
    dataset=dataset,
    default_data=default_data,
    model_fields_from_data=model_fields_from_data,
    abstract_batch=abstract_batch,
    example_batch=example_batch,
    flops_per_sample=flops_per_sample,
    # `demo` is the library's main demo (README's first command); `geolink_demo` names it like the other families'
    configs={"demo": "geolink_jax.geolink.configs.demo", "geolink_demo": "geolink_jax.geolink.configs.demo",
             "geolink_vit_b": "geolink_jax.geolink.configs.vit_b",
             "geolink_vit_l": "geolink_jax.geolink.configs.vit_l",
             "geolink_vit_h": "geolink_jax.geolink.configs.vit_h"},
    converters=CONVERTERS,
    embed=_embed,
    write_embeddings=lambda model, args: embed_lib.write_tile_embeddings(_embed, model, args),
    embed_arguments=embed_lib.tile_embed_arguments,
    device_augment=True,
    features=_features,
    preprocess=family_lib.Command("geolink", "image + OSM tiles → tile graph shards (GeoLink and MAE read them)",
                                  tile_commands.preprocess_arguments, tile_commands.run_preprocess),
    commands=commands.COMMANDS,
    varied_batches=varied_batches,
    pictures=pictures,
    log_keys=("loss", "img_loss", "contrastive_loss", "node_loss"),
    recipe_notes=lambda cfg, config: dict(pipeline.recipe_notes(config), masking=(
        f"image {cfg.img_mask_ratio:g}, OSM nodes {cfg.osm_mask_ratio:g} (at most {cfg.max_masked_nodes})")),
)
