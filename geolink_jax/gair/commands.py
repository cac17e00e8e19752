"""GAIR on the command line: `preprocess --family gair` (Sentinel-2 patches + a street-view table) and `embed` of
patches, photos and query points."""

import pathlib
import sys

from geolink_jax import family as family_lib
from geolink_jax import samples
from geolink_jax.data import outputs


def _preprocess_arguments(g):
    g.add_argument("--patches", default=None,
                   help="directory of patch GeoTIFFs (bands by name) or .npy + <stem>.json bbox sidecars; default: "
                        "the bundled GAIR demo")
    g.add_argument("--table", default=None,
                   help="CSV or GeoParquet of photos: sv_path, lon, lat, time, patch; default: the bundled demo's")
    g.add_argument("--coords", choices=("degrees", "crs"), default="degrees",
                   help="photo positions in their patch: linear in degrees (GAIR) or in the patch's own CRS")
    g.add_argument("--sv-bands", default=",".join(("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11",
                                                    "B12")), help="bands to keep, by name (default GAIR's ten)")
    g.add_argument("--sv-size", type=int, default=0,
                   help="store the photos resized to this side (the model's sv.image_size, 224 for gair_vit_b), so "
                        "training hosts only decode them (0: the files as given)")
    g.add_argument("--sv-format", choices=("jpeg", "raw"), default="jpeg",
                   help="with --sv-size: JPEG quality 95 (small, ~0.3 ms to decode) or raw uint8 pixels (no decoding, "
                        "exactly the pipeline's pixels, ~150 KB a photo at 224 px)")


def _preprocess(args, overrides=()):
    from geolink_jax.gair import preprocess as gair_pre

    patches = args.patches or str(samples.GAIR_DIR / "patches")
    table = args.table or str(samples.GAIR_DIR / "street_view.csv")
    problem = outputs.output_dir_problem(args.out)
    if not pathlib.Path(patches).is_dir():
        problem = f"--patches {patches}: no such directory"
    elif not pathlib.Path(table).is_file():
        problem = f"--table {table}: no such file"
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    cfg = gair_pre.GAIRPreprocessConfig(bands=tuple(b.strip().upper() for b in args.sv_bands.split(",") if b.strip()),
                                        coords=args.coords, sv_size=max(args.sv_size, 0), sv_format=args.sv_format)
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


PREPROCESS = family_lib.Command("gair", "Sentinel-2 patches + a street-view table", _preprocess_arguments,
                                _preprocess)


def embed_arguments(p):
    p.add_argument("--queries", default=None,
                   help="GAIR models: CSV of extra points (patch, lon, lat) to get localized RS embeddings at; "
                        "--tiles is then a GAIR preprocessed directory")


def write_embeddings(model, args):
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
    return f"wrote {kinds['rs']} patches, {kinds['sv']} photos, {kinds['query']} query points → {args.out}"
