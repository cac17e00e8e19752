"""The tile job on the command line, for the families that train on tiles (GeoLink, MAE): its flags and its run
(`geolink-jax preprocess --family geolink`)."""

import pathlib
import sys

from geolink_jax import samples
from geolink_jax.data import outputs


def preprocess_arguments(g):
    """The tile job's flags (an argparse group)."""
    g.add_argument("--input", default=str(samples.OSM_TILES_DIR),
                   help="directory of tiles (image + bbox sidecar or GeoTIFF, vector files), or a UFZ-layout "
                        "directory (img/, graph/*.npz, label/); default: the bundled sample tiles")
    g.add_argument("--pbf", default=None, help="OSM .pbf to take each tile's features from (pyosmium)")
    g.add_argument("--encoder", default="e5", help="tag encoder: e5 (default) | hash[:dim] | clip[:path]")
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    g.add_argument("--seed", type=int, default=0, help="polygon sample-point seed")
    g.add_argument("--max-features", type=int, default=5000, help="tiles over this feature count are reported")
    g.add_argument("--tiles-per-shard", type=int, default=512)
    g.add_argument("--invalid-geometry", choices=("repair", "skip"), default="repair")
    g.add_argument("--aspect-tolerance", type=float, default=0.25,
                   help="allowed relative difference between bbox ground aspect and image aspect")
    g.add_argument("--bands", default="",
                   help="image rule: bands of a raster that is not 8-bit RGB, 1-based indices or band names "
                        "(one = grey, or three = RGB; e.g. 4,3,2 or B04,B03,B02; default: the first three, or the "
                        "only band)")
    g.add_argument("--strict", action="store_true", help="stop at the first error or warning")


def run_preprocess(args, overrides=()):
    """`geolink-jax preprocess` of image + OSM tiles → tile shards. Returns the exit code."""
    from geolink_jax.tiles import job as preprocess
    from geolink_jax.tiles import sources as tile_sources

    problem = outputs.output_dir_problem(args.out)
    if args.pbf and not pathlib.Path(args.pbf).is_file():
        problem = f"--pbf {args.pbf}: no such file"
    elif args.pbf:
        from geolink_jax.osm import pbf as osm_pbf

        reason = osm_pbf.check(args.pbf)
        problem = f"--pbf {args.pbf}: {reason}" if reason else problem
    if not pathlib.Path(args.input).exists():
        problem = f"--input {args.input}: no such directory"
    if not problem and not outputs.is_remote(args.out):
        try:
            outputs.check_output(args.out, args.overwrite)
        except outputs.JobError as e:
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
        if args.overwrite and not outputs.is_remote(args.out) and pathlib.Path(args.out).is_dir():
            import shutil

            shutil.rmtree(args.out)  # Beam writes in place: clear first, so the output is never a mix
        manifest = preprocess.run_beam(specs, args.out, cfg, strict=args.strict,
                                          beam_args=args.beam_option)
    else:
        manifest = preprocess.run_local(specs, args.out, cfg, workers=args.workers, strict=args.strict,
                                        progress=not args.no_progress, overwrite=args.overwrite)
    print(f"\nwrote {args.out}/{outputs.MANIFEST}")
    print(preprocess.format_summary(manifest))
    dead = manifest["runner"].get("dead_worker_tiles")
    if dead:
        print(f"error: worker processes died on {len(dead)} tile(s) ({', '.join(dead[:5])}): not written, listed in "
              f"{args.out}/{outputs.ERRORS}", file=sys.stderr)
        return 1
    if not manifest["num_records"]:
        print(f"error: no tile was written ({manifest['num_failed_tiles']} failed; reasons in "
              f"{args.out}/{outputs.ERRORS})", file=sys.stderr)
        return 1
    return 0
