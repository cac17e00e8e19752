"""`geolink-jax` command line: preprocess, pretrain, convert."""
import argparse
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
    p.add_argument("--strict", action="store_true", help="stop at the first error or warning")
    p.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="local worker processes, or an Apache Beam pipeline (DirectRunner unless --beam-option "
                        "--runner=… is given)")
    p.add_argument("--beam-option", action="append", default=[], help="extra Beam pipeline option, repeatable")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_preprocess(args):
    from data_pipelines import preprocess
    from geolink_jax.data import tile_sources

    cfg = preprocess.PreprocessConfig(
        encoder=args.encoder, seed=args.seed, invalid_geometry=args.invalid_geometry,
        max_features=args.max_features, aspect_tolerance=args.aspect_tolerance,
        tiles_per_shard=args.tiles_per_shard, pbf=args.pbf)
    specs = tile_sources.discover_tiles(args.input)
    if not specs:
        print(f"error: no tiles found under {args.input}", file=sys.stderr)
        return 2
    try:
        if args.runner == "beam":
            from data_pipelines import beam_pipeline

            manifest = beam_pipeline.run_beam(specs, args.out, cfg, strict=args.strict,
                                              beam_args=args.beam_option)
        else:
            manifest = preprocess.run_local(specs, args.out, cfg, workers=args.workers, strict=args.strict,
                                            progress=not args.no_progress)
    except preprocess.PreprocessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nwrote {args.out}/{preprocess.MANIFEST}")
    print(preprocess.format_summary(manifest))
    return 0


def _pretrain_parser(sub):
    p = sub.add_parser("pretrain", help="GeoLink pretraining from an ml_collections config (resumes from the workdir)",
                       description="Extra --config.a.b=value flags override config fields.")
    p.add_argument("--config", required=True, help="config file, e.g. configs/demo.py (optionally FILE:arg)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, tensorboard/, config.json")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_pretrain(args, overrides):
    from absl import flags
    from ml_collections import config_flags

    from geolink_jax.train import trainer

    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "pretraining config file", flag_values=values,
                                    lock_config=True)
    try:
        values(["geolink-jax", f"--config={args.config}", *overrides])
    except flags.Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = trainer.train(values.config, args.workdir, progress=not args.no_progress)
    if rows:
        last = rows[-1]
        print(f"step {last['step']}: loss {last['loss']:.4f} (img {last['img_loss']:.4f}, contrastive "
              f"{last['contrastive_loss']:.4f}, node {last['node_loss']:.4f}); outputs in {args.workdir}")
    return 0


def _convert_parser(sub):
    p = sub.add_parser("convert", help="weights between the official PyTorch GeoLink / timm ViT and geolink_jax",
                       description="import: an official checkpoint (.pth via torch.load(weights_only=True), or "
                                   ".safetensors) → a geolink_jax weights directory. export: a geolink_jax weights "
                                   "directory or pretraining workdir → .safetensors (or .pth with torch).")
    p.add_argument("direction", choices=("import", "export"))
    p.add_argument("--src", required=True, help="import: weight file; export: weights directory or workdir")
    p.add_argument("--out", required=True, help="import: output directory; export: output file")
    p.add_argument("--format", choices=("official", "timm"), default="official",
                   help="official: the full multimodal GeoLink state_dict; timm: the image encoder as a timm ViT")
    p.add_argument("--heads", type=int, default=None,
                   help="import: encoder attention heads (default: the timm preset of that width/depth)")
    p.add_argument("--decoder-heads", type=int, default=16, help="import: MAE decoder heads (reference: 16)")
    p.add_argument("--fusion-heads", type=int, default=16, help="import: fusion block heads (reference: 16)")
    return p


def cmd_convert(args):
    from flax import nnx

    from geolink_jax import convert
    from geolink_jax.convert import params_store
    from geolink_jax.models import VIT_PRESETS, GeoLink

    try:
        if args.direction == "import":
            sd, _ = convert.load_weights(args.src)
            cfg = convert.infer_config(sd, args.heads, args.decoder_heads, args.fusion_heads)
            if args.format == "timm":  # the image branch; the rest of GeoLink keeps its fresh initialisation
                target = nnx.to_pure_dict(nnx.state(GeoLink(cfg, rngs=nnx.Rngs(0)), nnx.Param))
                image, report = convert.params_from_timm(sd, target, source=args.src)
                params = {**target, **image}
            else:  # every tensor comes from the file: shapes suffice, no initialisation
                target = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: GeoLink(cfg, rngs=nnx.Rngs(0))),
                                                    nnx.Param))
                params, report = convert.params_from_official(sd, target, source=args.src)
            params_store.save_params(args.out, params, cfg)
            print(f"imported {report['converted']} tensors from {args.src} ({args.format}; listed unused: "
                  f"{len(report.get('unused_listed', []))}) → {args.out}")
        else:
            params, cfg = params_store.load_params(args.src)
            if args.format == "timm":
                sd = convert.timm_state_dict(params, cfg)
                arch = {"B": "vit_base", "L": "vit_large", "H": "vit_huge", "S": "vit_small", "Ti": "vit_tiny"}
                name = next((f"{arch[k]}_patch{cfg.vit.patch_size}_{cfg.vit.image_size}"
                             for k, v in VIT_PRESETS.items() if (v.width, v.depth) == (cfg.vit.width, cfg.vit.depth)),
                            None)
                model_config = dict(architecture=name, num_classes=0, global_pool="", pos_embed_requires_grad=False)
            else:
                sd = convert.official_state_dict(params, cfg)
                model_config = dict(architecture=None, geolink=params_store.config_to_dict(cfg))
            convert.save_weights(sd, args.out, model_config)
            print(f"exported {len(sd)} tensors ({args.format}) → {args.out}")
    except (convert.ConversionError, FileNotFoundError, ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="geolink-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _preprocess_parser(sub).set_defaults(func=cmd_preprocess)
    _pretrain_parser(sub).set_defaults(func=cmd_pretrain)
    _convert_parser(sub).set_defaults(func=cmd_convert)
    args, extra = parser.parse_known_args(argv)
    if args.command == "pretrain":
        return args.func(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
