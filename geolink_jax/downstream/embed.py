"""Embeddings of tiles: `geolink-jax embed` (the loop and the files; each family gives its per-batch function).

Per tile (spec §6): unimodal ViT embeddings from the unmasked encoder after the final norm — `cls` (the class
token), `mean` (mean of the patch tokens) — and the multimodal hybrid map of the fusion extractor (spec §3.7),
mean-pooled as `fusion_mean`. Written as GeoParquet (GeoPandas, EPSG:4326) with each tile's footprint polygon
(null where unknown, e.g. UFZ tiles without a bbox sidecar) and, for labelled tiles, `label_majority` (the most
frequent non-ignored class) so that probes can run on it. With `maps_path`, the full maps go to a `.npz`:
tile_id [N], patch float32 [N, h, w, D] (normed patch tokens) and fusion float32 [N, h, w, fusion_dim].
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geolink_jax.tiles import downstream as tiles_lib


def majority_label(label, ignore=tiles_lib.IGNORE):
    """Most frequent class of a label map, ignoring `ignore` (-1 if none)."""
    values = label[label != ignore]
    return int(np.bincount(values).argmax()) if values.size else -1


def make_image_embed_fn(model):
    """Image-only models (ImageMAE): → jitted fn(images, graph ignored) → dict(cls [B, D], patch [B, h, w, D])."""
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def fn(params, images):
        enc = nnx.merge(graphdef, params).encode_image(images, key=None)
        gh, gw = enc["grid"]
        tokens = enc["tokens"].astype(jnp.float32)
        return dict(cls=tokens[:, 0], patch=tokens[:, 1:].reshape(tokens.shape[0], gh, gw, -1))

    return lambda images, graph: fn(params, jnp.asarray(images))


def embed(embed_fn, tiles, batch_size=8, progress=True):
    """tiles → (rows: list of dicts, maps: dict of arrays, or None for no tiles). embed_fn(images, graph) → dict of
    cls [B, D], patch [B, h, w, D] and optionally fusion [B, h, w, F] (a family's function); rows get cls, mean and,
    where the function makes a fusion map, fusion_mean."""
    from tqdm import tqdm

    fn = embed_fn
    rows, maps = [], {}
    todo = tiles_lib.batches(tiles, batch_size)
    for chunk, images, graph, _ in tqdm(todo, total=-(-len(tiles) // batch_size), desc="embed",
                                        disable=not progress):
        out = jax.tree.map(np.asarray, fn(images, graph))
        n = len(chunk)
        for k in ("patch", "fusion"):
            if k in out:
                maps.setdefault(k, []).append(out[k][:n])
        for i, t in enumerate(chunk):
            row = dict(tile_id=t.tile_id, bbox=t.bbox_lonlat, cls=out["cls"][i], mean=out["patch"][i].mean((0, 1)))
            if "fusion" in out:
                row["fusion_mean"] = out["fusion"][i].mean((0, 1))
            if t.label is not None:
                row["label_majority"] = majority_label(t.label)
            rows.append(row)
    if not rows:
        return rows, None
    return rows, dict(tile_id=np.array([r["tile_id"] for r in rows]), **{k: np.concatenate(v) for k, v in maps.items()})


def embed_images(model, tiles, batch_size=8, progress=True):
    """embed() for an image-only model: cls and mean columns, patch maps."""
    return embed(make_image_embed_fn(model), tiles, batch_size, progress)


TILE_VECTORS = ("cls", "mean", "fusion_mean")


def write_geoparquet(rows, path, geometry=None, columns=None, vectors=TILE_VECTORS):
    """rows (dicts) → GeoParquet at path, EPSG:4326. geometry: one shapely geometry or None per row (default: each
    row's `bbox` footprint as a box, null where unknown); columns: the keys to write, in order (default: those of
    the first row but bbox); the ones named in `vectors` are written as float32 lists (None where a row has none).
    Returns the GeoDataFrame."""
    import geopandas as gpd
    import shapely

    if geometry is None:
        geometry = [shapely.box(*r["bbox"]) if r.get("bbox") is not None else None for r in rows]
    columns = list(columns) if columns is not None else [k for k in rows[0] if k != "bbox"]
    data = {k: [r.get(k) for r in rows] for k in columns}
    for k in columns:
        if k in vectors:
            data[k] = [np.asarray(v, np.float32).tolist() if v is not None else None for v in data[k]]
    gdf = gpd.GeoDataFrame(data, geometry=geometry, crs="EPSG:4326")
    gdf.to_parquet(path)
    return gdf


def read_embeddings(path, column="mean"):
    """GeoParquet written by `embed` → (GeoDataFrame, float32 [N, D] of `column`)."""
    import geopandas as gpd

    gdf = gpd.read_parquet(path)
    if column not in gdf.columns:
        raise KeyError(f"{path}: no column {column!r} (have {list(gdf.columns)})")
    return gdf, np.stack([np.asarray(v, np.float32) for v in gdf[column]])


def write_tile_embeddings(embed, model, args):
    """`geolink-jax embed` of tiles with a family's `embed(model, tiles, batch_size)`: GeoParquet (+ maps .npz).
    Returns the summary line."""
    import pathlib

    import numpy as np

    tile_list = tiles_lib.load_tiles(args.tiles, model.cfg.vit.image_size, encoder=args.encoder)
    width = getattr(model.cfg, "osm_in_features", None)
    if width and tile_list and tile_list[0].graph.features["polygon"].shape[1] != width:
        raise ValueError(f"{args.tiles}: the tiles' tag features are "
                         f"{tile_list[0].graph.features['polygon'].shape[1]}-d, the model takes {width}-d (use the "
                         "--encoder the model was pretrained with)")
    rows, maps = embed(model, tile_list, args.batch_size)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_geoparquet(rows, args.out)
    columns = ", ".join(f"{k} {np.shape(v)[0]}" for k, v in rows[0].items() if k in ("cls", "mean", "fusion_mean"))
    line = f"wrote {len(rows)} tiles × ({columns}) → {args.out}"
    if args.maps:
        np.savez(args.maps, **maps)
        line += f"\nwrote maps {', '.join(f'{k} {v.shape}' for k, v in maps.items() if k != 'tile_id')} → {args.maps}"
    return line


def tile_embed_arguments(p):
    """`geolink-jax embed` flags of tile embeddings."""
    p.add_argument("--encoder", default="e5", help="tag encoder for raw OSM tiles (must match the pretraining's)")
    p.add_argument("--maps", default=None, help="also write the [N, h, w, D] maps to this .npz")


def resize_images(images, size):
    """float [B, H, W, C] → [B, size, size, C], bilinear with antialiasing (jax.image.resize)."""
    images = jnp.asarray(images, jnp.float32)
    if images.shape[1:3] == (size, size):
        return images
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "bilinear", antialias=True)


def rgb_of(wavelengths_um, what):
    """Indices of the red, green and blue bands (nearest to 665/560/490 nm within 50 nm) for an RGB encoder;
    ValueError naming `what` where one is missing."""
    from geolink_jax.data.sensors import RGB, nearest_bands

    idx = nearest_bands(wavelengths_um, RGB, tolerance_um=0.05)
    if None in idx:
        raise ValueError(f"{what} takes red, green and blue bands; the task's bands are at "
                         f"{', '.join(f'{w:g}' for w in wavelengths_um)} µm")
    return idx


def image_mae_features(model, wavelengths_um, modality="image", family="mae"):
    """An image-MAE encoder (GeoLink's image branch, the MAE family), modality "image": RGB at the model's size,
    ImageNet-normalised, unmasked → pooled = mean of the normed patch tokens [B, D], grid [B, h, w, D], levels [B, 4,
    h, w, D] (raw outputs of the four quarters' last blocks)."""
    from geolink_jax.downstream import features as features_lib
    from geolink_jax.tiles.augment import IMAGENET_MEAN, IMAGENET_STD

    if modality != "image":
        raise features_lib.unsupported(family, modality, ("image",))
    idx = rgb_of(wavelengths_um, "an RGB image encoder")
    size = model.cfg.vit.image_size
    blocks = features_lib.level_blocks(model.cfg.vit.depth)

    def apply(model, images):
        x = resize_images(images[..., jnp.asarray(idx)], size)
        enc = model.encode_image((x - IMAGENET_MEAN) / IMAGENET_STD, key=None, taps=blocks)
        gh, gw = enc["grid"]
        grid = enc["tokens"][:, 1:].astype(jnp.float32).reshape(x.shape[0], gh, gw, -1)
        levels = features_lib.stack_levels({b: t[:, 1:] for b, t in enc["taps"].items()}, blocks, (gh, gw))
        return dict(pooled=grid.mean((1, 2)), grid=grid, levels=levels)

    return features_lib.FeatureFn(model, apply)
