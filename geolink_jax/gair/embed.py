"""GAIR embeddings of preprocessed patches, and the "where was this photo taken?" picture.

`embed_patches` → rows of three kinds, written as one GeoParquet (EPSG:4326):
  kind "rs"     the patch footprint (polygon): rs = mean RS token (the RS embedding);
  kind "sv"     each photo's location (point): sv = pooler output, sv_proj = its projection (the contrastive
                space), loc = location embedding, localized_rs = the NILI query at the photo's location;
  kind "query"  any extra (lon, lat) inside a patch (point): localized_rs, loc.
`similarity_map`: cosine similarity of one photo's projected embedding to NILI queries on a dense grid of its
patch; `similarity_figure` draws it over the patch's true colour, with the photo beside it.
"""

import numpy as np

from geolink_jax.gair import nili
from geolink_jax.gair.preprocess import GAIR_BANDS

EMBEDDING_COLUMNS = ("rs", "sv", "sv_proj", "loc", "localized_rs")


def _samples(shard_dir, model_cfg):
    """Decoded evaluation samples (no augmentation, every photo up to the budget) with their records."""
    from geolink_jax.data import outputs, shards
    from geolink_jax.gair import pipeline, preprocess

    manifest = outputs.load_manifest(shard_dir)
    if manifest.get("format") != preprocess.FORMAT:
        raise shards.DataError(f"{shard_dir}: not GAIR patch shards (format {manifest.get('format')!r}); make them "
                               "with `geolink-jax preprocess --family gair`")
    # every photo of every patch (not the training budget), one static shape for all patches
    cfg = pipeline.GAIRPipelineConfig(batch_size=1, sv_budget=int(manifest["sv_per_patch"]["max"]),
                                      rs_size=model_cfg.rs.image_size,
                                      sv_size=model_cfg.sv.image_size, band_mean=tuple(model_cfg.band_mean),
                                      band_std=tuple(model_cfg.band_std), train=False)
    to_sample = pipeline.PatchToSample(cfg)
    source = shards.ShardSource(shards.manifest_shards(shard_dir, manifest))
    for i in range(len(source)):
        raw = source[i]
        yield preprocess.decode(raw), to_sample.random_map(raw, np.random.default_rng(0))


def _encoder(model):
    import jax
    from flax import nnx

    from geolink_jax.gair import pipeline

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, batch, query_rel):
        m = nnx.merge(graphdef, state)
        x = pipeline.step_inputs(batch)
        grid, rs = m.rs_tokens(x["rs"])
        sv = m.sv_embed(x["sv"])
        return dict(rs=rs, sv=sv, sv_proj=m.sv_proj(sv), loc=m.location_embed(x["sv_lonlat"]),
                    localized_rs=m.query(grid, x["sv_rel"]), query_rs=m.query(grid, query_rel))

    return lambda batch, query_rel: jax.device_get(run(state, batch, query_rel))


def embed_patches(model, shard_dir, queries=None, progress=True):
    """Rows (dicts with kind, patch_id, geometry (shapely), embeddings) for every patch, photo and query point.
    queries: {patch_id: [(lon, lat), ...]} of extra points (each must lie inside its patch)."""
    import shapely
    from tqdm import tqdm

    queries = {k: list(v) for k, v in (queries or {}).items()}
    n_query = -(-max([len(v) for v in queries.values()] + [1]) // 8) * 8  # one static query count: one compile
    run = _encoder(model)
    rows, seen = [], set()
    for record, sample in tqdm(list(_samples(shard_dir, model.cfg)), unit="patch", desc="embed", disable=not progress):
        pid = record["patch_id"]
        seen.add(pid)
        bbox = np.asarray(record["bbox_lonlat"], np.float64)  # lon_min, lat_max, lon_max, lat_min
        pts = np.asarray(queries.get(pid, []), np.float64).reshape(-1, 2)
        rel = np.asarray(nili.relative_coords(bbox, pts), np.float32) if len(pts) else np.zeros((0, 2), np.float32)
        outside = ~((rel >= 0) & (rel <= 1)).all(-1)
        if outside.any():
            lon, lat = pts[outside][0]
            raise ValueError(f"query point ({lon:.6f}, {lat:.6f}) is outside patch {pid} (lon {bbox[0]:.6f}.."
                             f"{bbox[2]:.6f}, lat {bbox[3]:.6f}..{bbox[1]:.6f})")
        batch = {k: np.asarray(v)[None] for k, v in sample.items()}
        out = run(batch, np.concatenate([rel, np.zeros((n_query - len(rel), 2), np.float32)])[None])
        rows.append(dict(kind="rs", patch_id=pid, geometry=shapely.box(bbox[0], bbox[3], bbox[2], bbox[1]),
                         rs=out["rs"][0]))
        for j in np.flatnonzero(sample["sv_valid"]):
            lon, lat = sample["sv_lonlat"][j]
            rows.append(dict(kind="sv", patch_id=pid, geometry=shapely.Point(float(lon), float(lat)),
                             sv=out["sv"][0, j], sv_proj=out["sv_proj"][0, j], loc=out["loc"][0, j],
                             localized_rs=out["localized_rs"][0, j]))
        if len(pts):
            loc = run_location(model, pts)
            for j, (lon, lat) in enumerate(pts):
                rows.append(dict(kind="query", patch_id=pid, geometry=shapely.Point(lon, lat),
                                 localized_rs=out["query_rs"][0, j], loc=loc[j]))
    unknown = sorted(set(queries) - seen)
    if unknown:
        raise ValueError(f"query points name unknown patches: {', '.join(unknown[:5])}")
    return rows


def run_location(model, lonlat):
    import jax.numpy as jnp

    return np.asarray(model.location_embed(jnp.asarray(lonlat, jnp.float32)))


def write_geoparquet(rows, path):
    """Rows of `embed_patches` → GeoParquet (EPSG:4326; embeddings as float lists, None where a kind has none)."""
    from geolink_jax.downstream import embed as embed_lib

    return embed_lib.write_geoparquet(rows, path, geometry=[r["geometry"] for r in rows],
                                      columns=("kind", "patch_id", *EMBEDDING_COLUMNS), vectors=EMBEDDING_COLUMNS)


def similarity_map(model, sample, sv_index, grid=32):
    """Cosine similarity [grid, grid] (rows top → bottom, columns west → east) between photo `sv_index`'s
    projected embedding and the NILI queries at the centres of a grid × grid lattice over its patch."""
    import jax
    import jax.numpy as jnp

    from geolink_jax.gair import pipeline

    c = (np.arange(grid) + 0.5) / grid
    ys, xs = np.meshgrid(c, c, indexing="ij")
    rel = np.stack([xs, ys], -1).reshape(1, -1, 2).astype(np.float32)  # (x, y) relative: x east, y south
    batch = {k: jnp.asarray(np.asarray(v)[None]) for k, v in sample.items()}
    x = pipeline.step_inputs(batch)
    g, _ = model.rs_tokens(x["rs"])
    q = model.query(g, jnp.asarray(rel))[0]
    z = model.sv_proj(model.sv_embed(x["sv"][:, sv_index:sv_index + 1]))[0, 0]
    sim = (q @ z) / (jnp.linalg.norm(q, axis=-1) * jnp.linalg.norm(z) + 1e-12)
    return np.asarray(jax.device_get(sim)).reshape(grid, grid)


def true_colour(rs, bands=GAIR_BANDS):
    """RS [H, W, C] in [0, 1] → 8-bit true colour (B04, B03, B02), stretched to its 2-98 percentiles."""
    rgb = np.stack([rs[..., bands.index(b)] for b in ("B04", "B03", "B02")], -1).astype(np.float32)
    lo, hi = np.percentile(rgb, 2), np.percentile(rgb, 98)
    return (np.clip((rgb - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def similarity_figure(model, samples, sv_index=0, grid=32):
    """"Where was this photo taken?": one row per sample (a patch with its photos, as the pipeline gives it): the
    patch in true colour under the cosine similarity of photo `sv_index`'s embedding to the NILI queries over it
    (semi-transparent heat map, colour bar with its range), the photo's true location ringed and the most similar
    query marked; the photo itself beside it. Returns a matplotlib Figure."""
    from geolink_jax import pictures

    fig = pictures.figure(8.0, 3.6 * len(samples) + 0.7)
    axes = fig.subplots(len(samples), 2, squeeze=False, width_ratios=(1.35, 1))
    for row, sample in zip(axes, samples):
        sim = similarity_map(model, sample, sv_index, grid)
        x, y = (float(v) for v in sample["sv_rel"][sv_index])
        iy, ix = np.unravel_index(np.argmax(sim), sim.shape)
        ax = row[0]
        ax.imshow(true_colour(np.asarray(sample["rs"])), extent=(0, 1, 1, 0))
        heat = ax.imshow(sim, extent=(0, 1, 1, 0), cmap="magma", alpha=0.55, interpolation="bilinear")
        ax.plot([x], [y], "o", ms=14, mfc="none", mec="cyan", mew=2.5, label="true location")
        ax.plot([(ix + 0.5) / grid], [(iy + 0.5) / grid], "x", ms=11, mew=2.5, color="white", label="most similar")
        ax.set_xticks([]), ax.set_yticks([])
        ax.legend(loc="lower left", fontsize=7, framealpha=0.7)
        bar = fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.02)
        bar.set_label(f"cosine similarity ({sim.min():.2f} … {sim.max():.2f})", fontsize=8)
        ax.set_title("its RS patch (true colour) and the similarity map", fontsize=9)
        row[1].imshow(np.asarray(sample["sv"][sv_index], np.uint8))
        row[1].set_xticks([]), row[1].set_yticks([])
        row[1].set_title(f"street-view photo {sv_index} of the patch", fontsize=9)
    fig.suptitle("GAIR: where was this photo taken? Similarity of the photo's embedding to the NILI queries of its "
                 "patch", fontsize=10)
    return fig


# Sentinel-2 central wavelengths (µm) of GAIR_BANDS
GAIR_WAVELENGTHS = (0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 1.61, 2.19)
BAND_TOLERANCE_UM = 0.1


def features(model, wavelengths_um, modality="image"):
    """`geolink-jax evaluate` (downstream/features.py). "image": the RS encoder's token mean (pooled), token grid and
    four block outputs (levels) of images [B, H, W, C] in [0, 1] (a task's stretch stands in for GAIR's clip to
    mean ± 2σ), resized bicubically to the encoder's size; each of GAIR's ten Sentinel-2 bands takes the task's
    nearest band within 0.1 µm (Landsat: the red edge from red or NIR), a band with none is a ValueError. "photo":
    the street-view encoder's pooler output of photos in [0, 1] (×255, normalised as in training, resized to its
    size). "location": the location encoder's embedding of (lon, lat)."""
    import jax
    import jax.numpy as jnp

    from geolink_jax.data.sensors import nearest_bands
    from geolink_jax.downstream import features as features_lib
    from geolink_jax.gair import augment

    if modality == "location":
        return features_lib.FeatureFn(model, lambda m, lonlat: dict(pooled=m.location_embed(lonlat)), modality)
    if modality == "photo":
        size = model.cfg.sv.image_size

        def photo(m, x):
            if x.shape[1:3] != (size, size):
                x = jax.image.resize(x, (x.shape[0], size, size, 3), "bilinear", antialias=True)
            x = (x * 255.0 - jnp.asarray(augment.SV_MEAN)) / jnp.asarray(augment.SV_STD)
            pooled, tokens = m.sv_encoder(x)
            return dict(pooled=pooled, grid=tokens[:, 1:].reshape(x.shape[0], size // m.cfg.sv.patch_size, -1,
                                                                  tokens.shape[-1]))

        return features_lib.FeatureFn(model, photo, modality)
    if modality != "image":
        raise features_lib.unsupported("gair", modality, ("image", "photo", "location"))
    if model.cfg.rs.in_channels != len(GAIR_WAVELENGTHS):
        raise ValueError(f"a GAIR RS encoder of {model.cfg.rs.in_channels} bands: features need its 10 Sentinel-2 "
                         "bands (GAIR_BANDS)")
    idx = nearest_bands(wavelengths_um, GAIR_WAVELENGTHS, BAND_TOLERANCE_UM)
    missing = [b for b, i in zip(GAIR_BANDS, idx) if i is None]
    if missing:
        raise ValueError(f"GAIR's RS encoder takes Sentinel-2 {', '.join(GAIR_BANDS)}; the task has no band within "
                         f"{BAND_TOLERANCE_UM} µm of {', '.join(missing)} (its bands: "
                         f"{', '.join(f'{w:g}' for w in wavelengths_um)} µm)")
    size, p = model.cfg.rs.image_size, model.cfg.rs.patch_size
    blocks = features_lib.level_blocks(model.cfg.rs.depth)

    def image(m, x):
        x = x[..., jnp.asarray(idx)]
        if x.shape[1:3] != (size, size):
            x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), "bicubic", antialias=True)
        tokens, taps = m.rs_encoder(x, taps=blocks)
        grid = tokens.reshape(x.shape[0], size // p, size // p, -1).astype(jnp.float32)
        return dict(pooled=grid.mean((1, 2)), grid=grid,
                    levels=features_lib.stack_levels(taps, blocks, (size // p, size // p)))

    return features_lib.FeatureFn(model, image, modality)
