"""DOFA-CLIP on the command line: `preprocess --family dofa_clip` (pair tables and OSM-captioned tiles), `embed` of
pairs and texts, `zeroshot` (classification and retrieval) and `dofa-teachers` (the MaKA teacher-feature cache)."""

import pathlib
import sys

from geolink_jax import family as family_lib
from geolink_jax import samples
from geolink_jax.data import outputs


def _preprocess_arguments(g):
    g.add_argument("--pairs", action="append", default=[],
                   help="a pair table (CSV/Parquet/JSONL: image, caption[, wavelengths, source]) or a directory of "
                        "image + OSM tiles to caption from their tags; repeatable; default: the bundled demo pairs")
    g.add_argument("--min-size", type=int, default=16, help="images smaller than this (px) are reported and skipped")


def _preprocess(args, overrides=()):
    from geolink_jax.data.image_rule import parse_stretch
    from geolink_jax.dofa_clip import preprocess as pairs

    sources = args.pairs or [str(samples.OSM_TILES_DIR), str(samples.DOFA_CLIP_DIR / "multispectral.csv")]
    problem = outputs.output_dir_problem(args.out)
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


PREPROCESS = family_lib.Command("dofa_clip", "image–caption pairs of any band count",
                                _preprocess_arguments, _preprocess)


def embed_arguments(p):
    p.add_argument("--texts", default=None,
                   help="DOFA-CLIP models: a text file, one text a line, to embed too; --tiles is then a DOFA-CLIP "
                        "pair shard directory (image and caption embeddings per pair)")


def write_embeddings(model, args):
    from geolink_jax.dofa_clip import zeroshot

    rows = zeroshot.embed_pairs(model, args.tiles, args.texts)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    zeroshot.write_parquet(rows, args.out)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("pair", "text")}
    return f"wrote {kinds['pair']} image–caption pairs and {kinds['text']} texts → {args.out}"


def _zeroshot_arguments(p):
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


def _zeroshot(args, overrides=()):
    from geolink_jax.convert import params_store
    from geolink_jax.dofa_clip import zeroshot

    if not args.params:
        raise ValueError("--params is required (a converted weights directory or a pretraining workdir)")
    family, model = params_store.load_model(args.params)
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


def _teachers_arguments(p):
    p.add_argument("--config", required=True, help="a DOFA-CLIP config (its model.teachers), name or file")
    p.add_argument("--data", required=True, help="pair shard directory (geolink-jax preprocess --family dofa_clip)")
    p.add_argument("--out", required=True, help="output directory (the shards with features)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _teachers(args, overrides=()):
    from geolink_jax import config as config_lib
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


COMMANDS = (
    family_lib.Command(
        "zeroshot", "DOFA-CLIP zero-shot classification (top-1/top-k) and image–text retrieval (recall@k), any band "
                    "count", _zeroshot_arguments, _zeroshot,
        description="Classifies labelled images by prompt templates (default: the bundled UFZ tiles in crops, 9 zone "
                    "classes) and/or scores image↔caption retrieval on a pair shard directory; prints the scores and "
                    "writes them as JSON.",
        user_errors=(ValueError, KeyError)),
    family_lib.Command(
        "dofa-teachers", "cache MaKA teacher features into DOFA-CLIP pair shards", _teachers_arguments, _teachers,
        description="Runs every cached teacher of a DOFA-CLIP config (JAX-native SigLIP towers, or timm models in "
                    "torch) once over pair shards and writes them again with the features, so the training step "
                    "never runs a teacher.",
        user_errors=(ValueError, KeyError, ImportError), overrides=True),
)
