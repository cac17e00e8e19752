"""`geolink-jax` command line: preprocess, pretrain, convert, embed, finetune, probe, attention, bench."""
import argparse
import os
import pathlib
import sys

from geolink_jax import samples


def _preprocess_parser(sub):
    p = sub.add_parser("preprocess", help="image tiles + OSM vectors → graph records in ArrayRecord shards",
                       description="Build tile graphs (reference spec §2) and write ArrayRecord shards, "
                                   "manifest.json and errors.jsonl. Defaults run on the bundled sample tiles.")
    p.add_argument("--input", default=str(samples.OSM_TILES_DIR),
                   help="directory of tiles (image + bbox sidecar or GeoTIFF, vector files), or a UFZ-layout "
                        "directory (img/, graph/*.npz, label/); default: the bundled sample tiles")
    p.add_argument("--pbf", default=None, help="OSM .pbf to take each tile's features from (pyosmium)")
    p.add_argument("--out", default="out/preprocessed", help="output directory")
    p.add_argument("--encoder", default="e5", help="tag encoder: e5 (default) | hash[:dim] | clip[:path]")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="polygon sample-point seed")
    p.add_argument("--max-features", type=int, default=5000, help="tiles over this feature count are reported")
    p.add_argument("--tiles-per-shard", type=int, default=512)
    p.add_argument("--invalid-geometry", choices=("repair", "skip"), default="repair")
    p.add_argument("--aspect-tolerance", type=float, default=0.25,
                   help="allowed relative difference between bbox ground aspect and image aspect")
    p.add_argument("--bands", default="",
                   help="image rule: bands of a raster that is not 8-bit RGB, 1-based indices or band names "
                        "(one = grey, or three = RGB; e.g. 4,3,2 or B04,B03,B02; default: the first three, or the "
                        "only band)")
    p.add_argument("--stretch", default="auto",
                   help="image rule: to 8 bits: auto (8-bit kept, else percentile:2,98) | percentile:LO,HI (per "
                        "tile and band) | range:MIN,MAX[,MIN2,MAX2,MIN3,MAX3] | none")
    p.add_argument("--strict", action="store_true", help="stop at the first error or warning")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty --out (local runs replace it only once the new output is "
                        "complete)")
    p.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="local worker processes, or an Apache Beam pipeline (DirectRunner unless --beam-option "
                        "--runner=… is given)")
    p.add_argument("--beam-option", action="append", default=[], help="extra Beam pipeline option, repeatable")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("GAIR (--family gair): Sentinel-2 patches + a street-view table")
    g.add_argument("--family", choices=("geolink", "gair", "dofa_clip"), default="geolink",
                   help="which family's records to make (default geolink)")
    g.add_argument("--patches", default=None,
                   help="directory of patch GeoTIFFs (bands by name) or .npy + <stem>.json bbox sidecars; default: "
                        "the bundled GAIR demo")
    g.add_argument("--table", default=None,
                   help="CSV or GeoParquet of photos: sv_path, lon, lat, time, patch; default: the bundled demo's")
    g.add_argument("--coords", choices=("degrees", "crs"), default="degrees",
                   help="photo positions in their patch: linear in degrees (GAIR) or in the patch's own CRS")
    g.add_argument("--sv-bands", default=",".join(("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11",
                                                    "B12")), help="bands to keep, by name (default GAIR's ten)")
    g = p.add_argument_group("DOFA-CLIP (--family dofa_clip): image–caption pairs of any band count")
    g.add_argument("--pairs", action="append", default=[],
                   help="a pair table (CSV/Parquet/JSONL: image, caption[, wavelengths, source]) or a directory of "
                        "image + OSM tiles to caption from their tags; repeatable; default: the bundled demo pairs")
    g.add_argument("--min-size", type=int, default=16, help="images smaller than this (px) are reported and skipped")
    return p


def cmd_preprocess_dofa_clip(args):
    from geolink_jax.data.image_rule import parse_stretch
    from geolink_jax.dofa_clip import preprocess as pairs

    sources = args.pairs or [str(samples.OSM_TILES_DIR), str(samples.DOFA_CLIP_DIR / "multispectral.csv")]
    problem = _output_dir_problem(args.out) if "://" not in args.out else None
    missing = [s for s in sources if not pathlib.Path(s).exists()]
    if missing:
        problem = f"--pairs {missing[0]}: no such table or directory"
    try:
        parse_stretch(args.stretch)
    except ValueError as e:
        problem = problem or str(e)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = pairs.PairPreprocessConfig(stretch=args.stretch, min_size=args.min_size)
    if args.runner == "beam":
        from apache_beam.options.pipeline_options import PipelineOptions

        manifest = pairs.run_beam(sources, args.out, cfg, PipelineOptions(args.beam_option))
    else:
        manifest = pairs.run_local(sources, args.out, cfg, progress=not args.no_progress, overwrite=args.overwrite)
    groups = "; ".join(f"{g['source']} {len(g['wavelengths'])} bands: {g['count']}" for g in manifest["groups"])
    print(f"\nwrote {args.out}/manifest.json: {manifest['num_records']} of {manifest['num_pairs']} pairs ({groups}); "
          f"{manifest['num_dropped']} dropped, reasons in {args.out}/{manifest['errors_file']}")
    if not manifest["num_records"]:
        print(f"error: no pair was written (reasons in {args.out}/{manifest['errors_file']})", file=sys.stderr)
        return 1
    return 0


def cmd_preprocess_gair(args):
    from geolink_jax.gair import preprocess as gair_pre

    patches = args.patches or str(samples.GAIR_DIR / "patches")
    table = args.table or str(samples.GAIR_DIR / "street_view.csv")
    problem = _output_dir_problem(args.out) if "://" not in args.out else None
    if not pathlib.Path(patches).is_dir():
        problem = f"--patches {patches}: no such directory"
    elif not pathlib.Path(table).is_file():
        problem = f"--table {table}: no such file"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = gair_pre.GAIRPreprocessConfig(bands=tuple(b.strip().upper() for b in args.sv_bands.split(",") if b.strip()),
                                        coords=args.coords)
    if args.runner == "beam":
        from apache_beam.options.pipeline_options import PipelineOptions

        manifest = gair_pre.run_beam(patches, table, args.out, cfg, PipelineOptions(args.beam_option))
    else:
        manifest = gair_pre.run_local(patches, table, args.out, cfg, progress=not args.no_progress,
                                      overwrite=args.overwrite)
    print(f"\nwrote {args.out}/manifest.json: {manifest['num_records']} of {manifest['num_patches']} patches, "
          f"{manifest['num_sv']} photos; {manifest['problems']['error']} problem(s) in {args.out}/"
          f"{manifest['errors_file']}")
    if not manifest["num_records"]:
        print(f"error: no patch was written (reasons in {args.out}/{manifest['errors_file']})", file=sys.stderr)
        return 1
    return 0


def cmd_preprocess(args):
    if args.family == "gair":
        return cmd_preprocess_gair(args)
    if args.family == "dofa_clip":
        return cmd_preprocess_dofa_clip(args)
    from geolink_jax.data import preprocess
    from geolink_jax.data import tile_sources

    problem = _output_dir_problem(args.out) if "://" not in args.out else None
    if args.pbf and not pathlib.Path(args.pbf).is_file():
        problem = f"--pbf {args.pbf}: no such file"
    if not pathlib.Path(args.input).exists():
        problem = f"--input {args.input}: no such directory"
    if not problem and "://" not in args.out:
        try:
            preprocess.check_output(args.out, args.overwrite)
        except preprocess.PreprocessError as e:
            problem = str(e)
    cfg = preprocess.PreprocessConfig(
        encoder=args.encoder, seed=args.seed, invalid_geometry=args.invalid_geometry,
        max_features=args.max_features, aspect_tolerance=args.aspect_tolerance,
        tiles_per_shard=args.tiles_per_shard, pbf=args.pbf, bands=args.bands, stretch=args.stretch)
    try:
        cfg.image_rule  # noqa: B018 - checks --bands/--stretch
    except ValueError as e:
        problem = problem or str(e)
    if problem:  # before any work
        print(f"error: {problem}", file=sys.stderr)
        return 2
    specs = tile_sources.discover_tiles(args.input)
    if not specs:
        print(f"error: no tiles found under {args.input}", file=sys.stderr)
        return 2
    if args.runner == "beam":
        from geolink_jax.data import beam as beam_pipeline

        if args.overwrite and "://" not in args.out and pathlib.Path(args.out).is_dir():
            import shutil

            shutil.rmtree(args.out)  # Beam writes in place: clear first, so the output is never a mix
        manifest = beam_pipeline.run_beam(specs, args.out, cfg, strict=args.strict,
                                          beam_args=args.beam_option)
    else:
        manifest = preprocess.run_local(specs, args.out, cfg, workers=args.workers, strict=args.strict,
                                        progress=not args.no_progress, overwrite=args.overwrite)
    print(f"\nwrote {args.out}/{preprocess.MANIFEST}")
    print(preprocess.format_summary(manifest))
    dead = manifest["runner"].get("dead_worker_tiles")
    if dead:
        print(f"error: worker processes died on {len(dead)} tile(s) ({', '.join(dead[:5])}): not written, listed in "
              f"{args.out}/"
              f"{preprocess.ERRORS}", file=sys.stderr)
        return 1
    if not manifest["num_records"]:
        print(f"error: no tile was written ({manifest['num_failed_tiles']} failed; reasons in "
              f"{args.out}/{preprocess.ERRORS})", file=sys.stderr)
        return 1
    return 0


def _output_dir_problem(out):
    """Why `out` cannot be an output directory (it or a parent is a file, or it is not writable), or None."""
    path = pathlib.Path(out).absolute()
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                return f"--out {out}: {p} is a file, not a directory"
            if not os.access(p, os.W_OK | os.X_OK):
                return f"--out {out}: {p} is not writable"
            return None
    return None


def _pretrain_parser(sub):
    p = sub.add_parser("pretrain", help="pretraining of any model family from a config (resumes from the workdir)",
                       description="--config is a config file (configs/demo.py, optionally FILE:arg) or a named "
                                   "config (demo, geolink_vit_b, geolink_vit_l, mae_demo, mae_vit_b); extra "
                                   "--config.a.b=value flags override its fields.")
    p.add_argument("--config", required=True, help="config file or named config")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, tensorboard/, config.json")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_pretrain(args, overrides):
    from geolink_jax import config as config_lib

    config = config_lib.load([f"--config={args.config}", *overrides])
    from geolink_jax.train import trainer

    rows = trainer.train(config, args.workdir, progress=not args.no_progress)
    if rows:
        last = rows[-1]
        parts = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.endswith("_loss"))
        print(f"step {last['step']}: loss {last['loss']:.4f}" + (f" ({parts})" if parts else "")
              + f"; outputs in {args.workdir}")
    return 0


def _convert_parser(sub):
    p = sub.add_parser("convert", help="weights between geolink_jax and the official PyTorch GeoLink / timm ViT",
                       description="import: a weight file (.pth via torch.load(weights_only=True), or .safetensors) → "
                                   "a geolink_jax weights directory. export: a geolink_jax weights directory or "
                                   "pretraining workdir → .safetensors (or .pth with torch). Formats per family: "
                                   "geolink: official, timm; mae: timm.")
    p.add_argument("direction", choices=("import", "export", "graphs"),
                   help="graphs: official .pt HeteroData graphs (a file or directory) → native .npz (needs torch + "
                        "torch_geometric; loaded with weights_only=True)")
    p.add_argument("--src", required=True, help="import: weight file; export: weights directory or workdir; "
                                                "graphs: .pt file or directory")
    p.add_argument("--out", required=True, help="import / graphs: output directory; export: output file")
    p.add_argument("--format", default=None,
                   help="official (the full multimodal GeoLink state_dict) or timm (the image encoder as a timm "
                        "ViT); default: the family's first (geolink: official, mae: timm)")
    p.add_argument("--family", default=None,
                   help="import: model family (default: the one recorded in the file's metadata, else geolink)")
    p.add_argument("--heads", type=int, default=None,
                   help="import without recorded config: encoder attention heads (default: the timm preset of that "
                        "width/depth)")
    p.add_argument("--decoder-heads", type=int, default=16, help="import without recorded config: MAE decoder heads")
    p.add_argument("--fusion-heads", type=int, default=16, help="import without recorded config: fusion heads")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert weights that hold NaN/Inf (refused "
                                                                  "otherwise, naming the tensors)")
    return p


def _converter(family_name, fmt):
    from geolink_jax import family as family_lib

    fam = family_lib.get_family(family_name)
    fmt = fmt or next(iter(fam.converters))
    if fmt not in fam.converters:
        raise ValueError(f"family {fam.name} has no weight format {fmt!r} (formats: {', '.join(fam.converters)})")
    return fmt, fam.converters[fmt]


def cmd_convert(args):
    from geolink_jax import convert
    from geolink_jax.convert import params_store
    from geolink_jax.models import VIT_PRESETS

    if args.direction == "graphs":
        from geolink_jax.convert import graphs

        written, errors = graphs.convert_pt_dir(args.src, args.out)
        for f, e in errors.items():
            print(f"error: {e}", file=sys.stderr)
        print(f"wrote {len(written)} .npz graphs → {args.out}" + (f"; {len(errors)} failed" if errors else ""))
        return 1 if errors else 0
    if args.direction == "import":
        sd, meta = convert.load_weights(args.src)
        if not args.allow_nonfinite:
            params_store.check_finite(sd, args.src)
        if meta and "geolink" in meta and "family" not in meta:  # exports of before the family interface
            meta = dict(family="geolink", model=meta["geolink"])
        recorded = (meta or {}).get("family") and meta.get("model") is not None
        family = args.family or (meta["family"] if recorded else "geolink")
        cfg = params_store.config_from_record(meta)[1] if recorded and meta["family"] == family else None
        fmt, conv = _converter(family, args.format)
        params, cfg, report = conv.from_state_dict(sd, cfg, args.src, heads=args.heads,
                                                   decoder_heads=args.decoder_heads, fusion_heads=args.fusion_heads)
        params_store.save_params(args.out, params, cfg)
        print(f"imported {report['converted']} tensors from {args.src} ({family} {fmt}; model config "
              f"{'from the file' if recorded else 'inferred from the tensors'}; listed unused: "
              f"{len(report.get('unused_listed', []))}) → {args.out}")
    else:
        family, params, cfg = params_store.load_params(args.src)
        params_store.check_params(params, family, cfg, args.src, allow_nonfinite=args.allow_nonfinite)
        fmt, conv = _converter(family, args.format)
        sd = conv.to_state_dict(params, cfg)
        if fmt == "timm":
            arch = {"B": "vit_base", "L": "vit_large", "H": "vit_huge", "S": "vit_small", "Ti": "vit_tiny"}
            name = next((f"{arch[k]}_patch{cfg.vit.patch_size}_{cfg.vit.image_size}"
                         for k, v in VIT_PRESETS.items() if (v.width, v.depth) == (cfg.vit.width, cfg.vit.depth)),
                        None)
            model_config = dict(architecture=name, num_classes=0, global_pool="", pos_embed_requires_grad=False)
        else:
            model_config = dict(architecture=None)
        model_config.update(params_store.config_record(cfg))  # `convert import` rebuilds the model from it
        convert.save_weights(sd, args.out, model_config)
        print(f"exported {len(sd)} tensors ({family} {fmt}) → {args.out}")
    return 0


def _weights_and_tiles(p, tiles_default, tiles_help):
    p.add_argument("--params", default=None,
                   help="weights: a `convert import` directory or a pretraining workdir (latest checkpoint)")
    p.add_argument("--tiles", default=tiles_default, help=tiles_help)
    p.add_argument("--encoder", default="e5", help="tag encoder for raw OSM tiles (must match the pretraining's)")
    p.add_argument("--batch-size", type=int, default=8)


def _load_model(args, geolink_only=False):
    from geolink_jax.convert import params_store

    if not args.params:
        raise ValueError("--params is required (a converted weights directory or a pretraining workdir)")
    family, model = params_store.load_model(args.params)
    if geolink_only and family != "geolink":
        raise ValueError(f"{args.params}: a {family} model; this command needs a GeoLink model (image + OSM fusion)")
    return family, model


def _embed_parser(sub):
    p = sub.add_parser("embed", help="tile embeddings (cls / mean / fusion) → GeoParquet with footprints",
                       description="Unimodal (cls, mean patch token) and multimodal (mean of the hybrid fusion map) "
                                   "embeddings per tile, written as GeoParquet with each tile's footprint; --maps "
                                   "also writes the patch-token and fusion maps as .npz.")
    _weights_and_tiles(p, str(samples.OSM_TILES_DIR), "a preprocessed shard directory, a UFZ-layout directory or raw "
                                                     "tiles (default: the bundled OSM tiles)")
    p.add_argument("--out", default="out/embeddings.parquet")
    p.add_argument("--maps", default=None, help="also write the [N, h, w, D] maps to this .npz")
    p.add_argument("--queries", default=None,
                   help="GAIR models: CSV of extra points (patch, lon, lat) to get localized RS embeddings at; "
                        "--tiles is then a GAIR preprocessed directory")
    p.add_argument("--texts", default=None,
                   help="DOFA-CLIP models: a text file, one text a line, to embed too; --tiles is then a DOFA-CLIP "
                        "pair shard directory (image and caption embeddings per pair)")
    return p


def cmd_embed(args):
    import numpy as np

    from geolink_jax.downstream import embed, tiles

    from geolink_jax import family as family_lib

    family, model = _load_model(args)
    if family == "gair":
        return cmd_embed_gair(args, model)
    if family == "dofa_clip":
        return cmd_embed_dofa_clip(args, model)
    tile_list = tiles.load_tiles(args.tiles, model.cfg.vit.image_size, encoder=args.encoder)
    width = getattr(model.cfg, "osm_in_features", None)
    if width and tile_list and tile_list[0].graph.features["polygon"].shape[1] != width:
        raise ValueError(f"{args.tiles}: the tiles' tag features are "
                         f"{tile_list[0].graph.features['polygon'].shape[1]}-d, the model takes {width}-d (use the "
                         "--encoder the model was pretrained with)")
    rows, maps = family_lib.get_family(family).embed(model, tile_list, args.batch_size)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    embed.write_geoparquet(rows, args.out)
    columns = ", ".join(f"{k} {np.shape(v)[0]}" for k, v in rows[0].items() if k in ("cls", "mean", "fusion_mean"))
    print(f"wrote {len(rows)} tiles × ({columns}) → {args.out}")
    if args.maps:
        np.savez(args.maps, **maps)
        print(f"wrote maps {', '.join(f'{k} {v.shape}' for k, v in maps.items() if k != 'tile_id')} → {args.maps}")
    return 0


def cmd_embed_gair(args, model):
    import csv

    from geolink_jax.gair import embed as gair_embed

    queries = {}
    if args.queries:
        with open(args.queries, newline="") as f:
            for i, row in enumerate(csv.DictReader(f)):
                try:
                    queries.setdefault(row["patch"], []).append((float(row["lon"]), float(row["lat"])))
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{args.queries}: row {i + 2}: needs patch, lon, lat ({e})") from None
    rows = gair_embed.embed_patches(model, args.tiles, queries)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    gair_embed.write_geoparquet(rows, args.out)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("rs", "sv", "query")}
    print(f"wrote {kinds['rs']} patches, {kinds['sv']} photos, {kinds['query']} query points → {args.out}")
    return 0


def cmd_embed_dofa_clip(args, model):
    from geolink_jax.dofa_clip import zeroshot

    rows = zeroshot.embed_pairs(model, args.tiles, args.texts)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    zeroshot.write_parquet(rows, args.out)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("pair", "text")}
    print(f"wrote {kinds['pair']} image–caption pairs and {kinds['text']} texts → {args.out}")
    return 0


def _zeroshot_parser(sub):
    p = sub.add_parser("zeroshot", help="DOFA-CLIP zero-shot classification (top-1/top-k) and image–text retrieval "
                                        "(recall@k), any band count",
                       description="Classifies labelled images by prompt templates (default: the bundled UFZ tiles "
                                   "in crops, 9 zone classes) and/or scores image↔caption retrieval on a pair shard "
                                   "directory; prints the scores and writes them as JSON.")
    p.add_argument("--params", default=None, help="a DOFA-CLIP `convert import` directory or pretraining workdir")
    p.add_argument("--tiles", default=str(samples.UFZ_DIR),
                   help="labelled images: a UFZ-layout directory (img/, label/), or a table (CSV: image, label"
                        "[, wavelengths]) of any band count; '' to skip classification")
    p.add_argument("--classes", default=None,
                   help="class names, comma-separated, in label order (default: the UFZ zones; for a table: its "
                        "labels sorted)")
    p.add_argument("--templates", default=None, help="prompt templates with {}, separated by '|' (default: 5 "
                                                     "remote-sensing templates)")
    p.add_argument("--pairs", default=None, help="a DOFA-CLIP pair shard directory to score retrieval on")
    p.add_argument("--crop", type=int, default=112, help="UFZ crop size (px)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="out/zeroshot.json")
    return p


def cmd_zeroshot(args):
    from geolink_jax.dofa_clip import zeroshot

    family, model = _load_model(args)
    if family != "dofa_clip":
        raise ValueError(f"{args.params}: a {family} model; zeroshot needs a DOFA-CLIP model")
    templates = tuple(args.templates.split("|")) if args.templates else zeroshot.TEMPLATES
    if any("{}" not in t for t in templates):
        raise ValueError(f"--templates {args.templates}: every template needs a {{}} for the class name")
    report = {}
    if args.tiles:
        sets, classes = zeroshot.labelled_images(args.tiles, args.classes, args.crop)
        report["classification"] = zeroshot.classify_sets(model, sets, classes, templates, args.batch_size)
        c = report["classification"]
        print(f"zero-shot classification, {c['count']} images, {len(classes)} classes: top-1 {c['top1']:.3f}, "
              f"top-3 {c['top3']:.3f}")
    if args.pairs:
        report["retrieval"] = r = zeroshot.retrieval(model, args.pairs, args.batch_size)
        print(f"retrieval, {r['count']} pairs: image→text R@1/5/10 "
              + "/".join(f"{v:.3f}" for v in r["image_to_text"].values())
              + ", text→image " + "/".join(f"{v:.3f}" for v in r["text_to_image"].values()))
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    zeroshot.write_report(report, args.out)
    print(f"wrote {args.out}")
    return 0


def _teachers_parser(sub):
    p = sub.add_parser("dofa-teachers", help="cache MaKA teacher features into DOFA-CLIP pair shards",
                       description="Runs every cached teacher of a DOFA-CLIP config (JAX-native SigLIP towers, or "
                                   "timm models in torch) once over pair shards and writes them again with the "
                                   "features, so the training step never runs a teacher.")
    p.add_argument("--config", required=True, help="a DOFA-CLIP config (its model.teachers), name or file")
    p.add_argument("--data", required=True, help="pair shard directory (geolink-jax preprocess --family dofa_clip)")
    p.add_argument("--out", required=True, help="output directory (the shards with features)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_dofa_teachers(args, overrides=()):
    from geolink_jax import config as config_lib
    from geolink_jax import family as family_lib
    from geolink_jax.dofa_clip import teachers

    config = config_lib.load([f"--config={args.config}", *overrides])
    if config.family != "dofa_clip":
        raise ValueError(f"--config {args.config}: a {config.family} config; dofa-teachers needs a DOFA-CLIP one")
    model_cfg = family_lib.model_config("dofa_clip", config)
    cached = [t for t in model_cfg.teachers if not t.online]
    if not cached:
        raise ValueError(f"--config {args.config}: no cached teachers in model.teachers")
    manifest = teachers.cache_features(args.data, args.out, cached, model_cfg.teacher_band_rule, args.batch_size,
                                       progress=not args.no_progress, overwrite=args.overwrite)
    print(f"wrote {args.out}: {manifest['num_records']} pairs with features of "
          + ", ".join(f"{n} {tuple(v['shape'])}" for n, v in manifest["teachers"].items()))
    return 0


def _finetune_parser(sub):
    p = sub.add_parser("finetune", help="UperNet segmentation on the frozen GeoLink fusion extractor",
                       description="Train the UperNet head (spec §3.9) on labelled tiles with the encoder frozen; "
                                   "report mIoU and per-class F1; write head.safetensors (reference SegUPerNet head "
                                   "names), scores.json, metrics.jsonl and segmentation.png to the workdir.")
    _weights_and_tiles(p, str(samples.UFZ_DIR), "labelled tiles (default: the bundled UFZ tiles)")
    p.add_argument("--eval-tiles", default=None, help="tiles to score (default: the training tiles)")
    p.add_argument("--workdir", default="out/finetune")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=512, help="UperNet width (reference: 512)")
    p.add_argument("--num-classes", type=int, default=9)
    p.set_defaults(batch_size=2)
    return p


def cmd_finetune(args):
    import json

    from geolink_jax.downstream import segmentation, tiles

    _, model = _load_model(args, geolink_only=True)
    size = model.cfg.vit.image_size
    train = tiles.load_tiles(args.tiles, size, encoder=args.encoder, num_classes=args.num_classes)
    test = tiles.load_tiles(args.eval_tiles, size, encoder=args.encoder, num_classes=args.num_classes) \
        if args.eval_tiles else train
    cfg = segmentation.FinetuneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                      channels=args.channels, num_classes=args.num_classes)
    _, history, result = segmentation.finetune(model, train, test, cfg, workdir=args.workdir)
    print(f"loss {history[0]['loss']:.4f} → {history[-1]['loss']:.4f} over {len(history)} steps")
    print(f"mIoU {result['miou']:.4f}  mean F1 {result['mean_f1']:.4f}  pixel accuracy {result['pixel_accuracy']:.4f}")
    for name, iou, f1 in zip(result["classes"], result["iou"], result["f1"]):
        print(f"  {name:15s} IoU {iou:.3f}  F1 {f1:.3f}")
    print(f"wrote {args.workdir}/head.safetensors, scores.json, segmentation.png")
    (pathlib.Path(args.workdir) / "command.json").write_text(json.dumps(vars(args), indent=1, default=str))
    return 0


def _probe_parser(sub):
    p = sub.add_parser("probe", help="linear probe or kNN on pooled embeddings (k-fold cross-validation)")
    p.add_argument("--embeddings", required=True, help="GeoParquet written by `geolink-jax embed`")
    p.add_argument("--feature", default="mean", help="embedding column: cls | mean | fusion_mean")
    p.add_argument("--label-column", default="label_majority", help="integer class column (rows < 0 dropped)")
    p.add_argument("--method", choices=("linear", "knn"), default="linear")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--k", type=int, default=20, help="kNN neighbours")
    return p


def cmd_probe(args):
    import numpy as np

    from geolink_jax.downstream import embed, probe

    gdf, x = embed.read_embeddings(args.embeddings, args.feature)
    if args.label_column not in gdf.columns:
        raise ValueError(f"{args.embeddings}: no label column {args.label_column!r}")
    y = np.asarray(gdf[args.label_column], np.int64)
    keep = y >= 0
    kwargs = dict(k=args.k) if args.method == "knn" else {}
    result = probe.cross_validate(x[keep], y[keep], args.method, folds=args.folds, **kwargs)
    print(f"{args.method} probe on {args.feature} ({keep.sum()} tiles, {result['folds']} folds): accuracy "
          f"{result['accuracy']:.3f} (folds {', '.join(f'{a:.2f}' for a in result['fold_accuracy'])})")
    return 0


def _attention_parser(sub):
    p = sub.add_parser("attention", help="picture of the fusion block's node→image attention for one OSM node")
    _weights_and_tiles(p, str(samples.OSM_TILES_DIR), "tiles (default: the bundled OSM tiles)")
    p.add_argument("--tile", default=None, help="tile id (default: the first)")
    p.add_argument("--node", type=int, default=0, help="index among the tile's fusion nodes (type-major order)")
    p.add_argument("--out", default="out/attention.png")
    return p


def cmd_attention(args):
    from geolink_jax.downstream import attention, tiles

    _, model = _load_model(args, geolink_only=True)
    tile_list = tiles.load_tiles(args.tiles, model.cfg.vit.image_size, encoder=args.encoder)
    tile = next((t for t in tile_list if args.tile in (None, t.tile_id)), None)
    if tile is None:
        raise ValueError(f"no tile {args.tile!r} under {args.tiles}")
    pic, info = attention.node_attention_picture(model, tile, args.node)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pic.save(args.out)
    print(f"{tile.tile_id}: node {args.node} ({info['type']} #{info['row']}) of {info['num_nodes']} → {args.out}")
    return 0


def _bench_parser(sub):
    p = sub.add_parser("bench", help="benchmark suites → JSON rows, markdown/CSV table, plots; or `bench report`",
                       description="Run a benchmark sweep (a named sweep of geolink_jax/bench/sweeps or a sweep "
                                   "file) and report it, or (`bench report`) re-make the table and plots from result "
                                   "rows. Extra --config.SUITE.KEY=value flags override the sweep's suite defaults, "
                                   "e.g. --config.step.repeats=3 --config.step.config=mae_demo.")
    p.add_argument("action", nargs="?", choices=("run", "report"), default="run")
    p.add_argument("--suite", default="quick", help="sweep: quick | cpu | gpu | path/to/sweep.py (run)")
    p.add_argument("--only", default="", help="comma-separated suites of the sweep to run (step,mask,pipeline,"
                                              "input,preprocess,memory,compile,reference)")
    p.add_argument("--reference-repo", default=None,
                   help="checkout of github.com/bailubin/GeoLink_NeurIPS2025 for the side-by-side suite")
    p.add_argument("--no-recommended", action="store_true", help="GPU: do not apply jax_optimization_level O1")
    p.add_argument("--rows", action="append", default=[], help="report: rows.jsonl file(s) to read")
    p.add_argument("--out", default="out/bench", help="directory for rows.jsonl, results.md/.csv and plots")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_bench(args, overrides):
    from geolink_jax.bench import report, rows, runner

    command = "geolink-jax " + " ".join(sys.argv[1:]) if argv_is_cli() else None
    if args.action == "report":
        if not args.rows:
            print("error: bench report needs --rows FILE", file=sys.stderr)
            return 2
        found = [r for path in args.rows for r in rows.read(path)]
        path = report.write_report(found, args.out, command=command)
    else:
        base, runs = runner.load_sweep(args.suite)
        only = [s for s in args.only.split(",") if s]
        cfgs = runner.plan(base, runs, only=only, overrides=overrides, reference_repo=args.reference_repo)
        found = runner.execute(cfgs, args.out, progress=not args.no_progress, recommended=not args.no_recommended,
                               budget_s=runner.budget_s(base, overrides))
        path = report.write_report(found, args.out, title=f"geolink_jax benchmarks: suite {args.suite}",
                                   command=command)
    print()
    print(report.markdown_table(found))
    print(f"\nwrote {path} (+ results.csv, plots) from {len(found)} rows")
    return 1 if any(r["status"] == "error" for r in found) else 0


def _plan_parser(sub):
    p = sub.add_parser("plan", help="compile-only plan for a pod: memory, FLOPs, collectives, roofline per chip",
                       description="Lower and compile the real train step of a config for N simulated devices on a "
                                   "mesh (nothing is allocated or run) and print per-device memory, FLOPs, "
                                   "collective bytes by kind and a roofline estimate for named chips; flags a plan "
                                   "that does not fit a chip and suggests the smallest FSDP degree that does. "
                                   "Extra --config.a.b=value flags override the config.")
    p.add_argument("--config", required=True, help="named config (geolink_vit_l, mae_vit_b, …) or config file")
    p.add_argument("--devices", type=int, required=True, help="number of devices to plan for")
    p.add_argument("--mesh", default="", help="data=N,fsdp=N,tensor=N (one may be -1); default: the config's mesh")
    p.add_argument("--batch", type=int, default=0, help="global batch (default: the config's)")
    from geolink_jax.train.plan import CHIPS  # a light module: jax is imported inside its functions

    p.add_argument("--chip", default="h100", help=f"comma-separated chips: {', '.join(CHIPS)}")
    p.add_argument("--hbm-gib", type=float, default=None, help="plan against this much memory per device instead "
                                                                 "of the chips' HBM")
    p.add_argument("--no-suggest", action="store_true", help="do not search for a mesh that fits")
    p.add_argument("--json", default="", help="also write the plan as JSON to this file")
    return p


def _parse_mesh(text):
    from geolink_jax.config import ConfigError

    mesh = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in ("data", "fsdp", "tensor") or not value.lstrip("-").isdigit():
            raise ConfigError(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N")
        mesh[key] = int(value)
    return mesh


def cmd_plan(args, overrides):
    import json

    from geolink_jax.config import ConfigError
    from geolink_jax.train import plan

    chips = [c for c in args.chip.split(",") if c]
    unknown = [c for c in chips if c not in plan.CHIPS]
    if unknown:
        raise ConfigError(f"--chip {','.join(unknown)}: unknown (known: {', '.join(plan.CHIPS)})")
    mesh = _parse_mesh(args.mesh)
    if not mesh:
        from geolink_jax import config as config_lib

        mesh = config_lib.load([f"--config={args.config}", *overrides]).mesh.to_dict()
    plan.ensure_devices(args.devices)  # before anything starts JAX's backend
    result = plan.plan(args.config, args.devices, mesh, chips, args.batch or None, overrides,
                       suggest=not args.no_suggest, hbm_gib=args.hbm_gib)
    print("\n".join(plan.format_plan(result)))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


def argv_is_cli():
    return pathlib.Path(sys.argv[0]).name in ("geolink-jax", "cli.py", "__main__.py")


def user_errors(command):
    """The typed errors that are user mistakes or unusable inputs for `command` → their exit code (2: usage,
    1: data). Anything else is a bug and keeps its traceback."""
    from geolink_jax.config import ConfigError
    from geolink_jax.data.shards import DataError
    from geolink_jax.train.checkpoint import CheckpointError, CheckpointMismatch

    codes = {ConfigError: 2, CheckpointMismatch: 2, FileNotFoundError: 1, DataError: 1, CheckpointError: 1}
    if command in ("embed", "finetune", "probe", "attention", "zeroshot", "dofa-teachers"):
        codes.update({ValueError: 1, KeyError: 1})
    if command == "preprocess":  # a --strict run stopped on a problem
        from geolink_jax.data.preprocess import PreprocessError

        codes[PreprocessError] = 1
    if command in ("convert", "dofa-teachers"):  # ConversionError is a ValueError; .pth files and timm need torch
        codes.update({ValueError: 1, ImportError: 1})
    return codes


def main(argv=None):
    parser = argparse.ArgumentParser(prog="geolink-jax", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error reported in one line")
    sub = parser.add_subparsers(dest="command", required=True)
    _preprocess_parser(sub).set_defaults(func=cmd_preprocess)
    _pretrain_parser(sub).set_defaults(func=cmd_pretrain)
    _convert_parser(sub).set_defaults(func=cmd_convert)
    _embed_parser(sub).set_defaults(func=cmd_embed)
    _zeroshot_parser(sub).set_defaults(func=cmd_zeroshot)
    _teachers_parser(sub).set_defaults(func=cmd_dofa_teachers)
    _finetune_parser(sub).set_defaults(func=cmd_finetune)
    _probe_parser(sub).set_defaults(func=cmd_probe)
    _attention_parser(sub).set_defaults(func=cmd_attention)
    _bench_parser(sub).set_defaults(func=cmd_bench)
    _plan_parser(sub).set_defaults(func=cmd_plan)
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("pretrain", "bench", "plan", "dofa-teachers")
    if extra and not takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    codes = user_errors(args.command)
    try:  # the one error boundary: typed library errors → one line and an exit code
        return args.func(args, extra) if takes_overrides else args.func(args)
    except tuple(codes) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return next(code for cls, code in codes.items() if isinstance(e, cls))


if __name__ == "__main__":
    sys.exit(main())
