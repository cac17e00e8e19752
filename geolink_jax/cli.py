"""`geolink-jax` command line: `geolink-jax preprocess …` (more subcommands come with training and conversion)."""
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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="geolink-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _preprocess_parser(sub).set_defaults(func=cmd_preprocess)
    _pretrain_parser(sub).set_defaults(func=cmd_pretrain)
    args, extra = parser.parse_known_args(argv)
    if args.command == "pretrain":
        return args.func(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
