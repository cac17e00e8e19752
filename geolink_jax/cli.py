"""`geolink-jax` command line: preprocess, pretrain, convert, merge, embed, probe, bench, plan, and the commands each
family adds (GeoLink: finetune, attention; DOFA-CLIP: zeroshot, dofa-teachers). Nothing here names a family: what
differs per family comes from its `Family` record (geolink_jax/family.py)."""
import argparse
import json
import pathlib
import sys

from geolink_jax import samples


def _families():
    """Every registered family (imports them: the command line offers what each provides)."""
    from geolink_jax import family as family_lib

    return [family_lib.get_family(name) for name in family_lib.FAMILIES]


class _OnceGroup:
    """Adds each option string once to an argparse parser or group: families that share a job or a flag (GeoLink
    and MAE read the same tiles; several converters take --heads) each declare it, and it is offered once."""

    def __init__(self, group, seen):
        self.group, self.seen = group, seen

    def add_argument(self, *names, **kwargs):
        if any(n in self.seen for n in names):
            return None
        self.seen.update(names)
        return self.group.add_argument(*names, **kwargs)


def _option_strings(parser):
    return {s for action in parser._actions for s in action.option_strings}


def _preprocess_parser(sub):
    families = [f for f in _families() if f.preprocess]
    p = sub.add_parser("preprocess", help="raw data → a family's records in ArrayRecord shards (+ manifest.json, "
                                          "errors.jsonl)",
                       description="Preprocess a family's training data into ArrayRecord shards, manifest.json and "
                                   "errors.jsonl. Defaults run on the family's bundled sample data. "
                                   + "; ".join(f"{f.name}: {f.preprocess.help}" for f in families) + ".")
    p.add_argument("--family", choices=[f.name for f in families], default=families[0].name,
                   help=f"whose records to make (default {families[0].name})")
    p.add_argument("--out", default="out/preprocessed", help="output directory")
    p.add_argument("--stretch", default="auto",
                   help="image rule: rasters to 8 bits: auto (8-bit kept, else percentile:2,98) | percentile:LO,HI "
                        "(per tile and band) | range:MIN,MAX[,MIN2,MAX2,…] | none")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty --out (local runs replace it only once the new output is "
                        "complete)")
    p.add_argument("--runner", choices=("local", "beam"), default="local",
                   help="this process (or local worker processes), or an Apache Beam pipeline (DirectRunner unless "
                        "--beam-option --runner=… is given)")
    p.add_argument("--beam-option", action="append", default=[], help="extra Beam pipeline option, repeatable")
    p.add_argument("--no-progress", action="store_true")
    seen, done = _option_strings(p), set()
    for f in families:
        if f.preprocess.arguments in done:  # a job two families share (GeoLink and MAE: the tiles)
            continue
        done.add(f.preprocess.arguments)
        users = [g.name for g in families if g.preprocess.arguments is f.preprocess.arguments]
        group = p.add_argument_group(f"--family {'|'.join(users)}: {f.preprocess.help}")
        f.preprocess.arguments(_OnceGroup(group, seen))
    return p


def cmd_preprocess(args):
    from geolink_jax import family as family_lib

    return family_lib.get_family(args.family).preprocess.run(args)


def _named_configs():
    """'family: name, name; …' of every registered named config."""
    return "; ".join(f"{f.name}: {', '.join(f.configs)}" for f in _families())


def _pretrain_parser(sub):
    p = sub.add_parser("pretrain", help="pretraining of any model family from a config (resumes from the workdir)",
                       description="--config is a config file (configs/demo.py, optionally FILE:arg) or a named "
                                   f"config ({_named_configs()}); extra --config.a.b=value flags override its "
                                   "fields.")
    p.add_argument("--config", required=True, help="config file or named config")
    p.add_argument("--workdir", help="checkpoints, metrics.jsonl, tensorboard/, config.json (required to train)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the recipe card (effective batch in the recipe's unit, learning rate, schedule, "
                        "clipping, optimiser, initialisation, augmentation; the reference run's values beside ours "
                        "with their source) and exit; steps are counted when data.num_examples is set or "
                        "data.path holds a manifest")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_pretrain(args, overrides):
    from geolink_jax import config as config_lib

    config = config_lib.load([f"--config={args.config}", *overrides])
    if args.dry_run:
        from geolink_jax.train import recipe

        num = None
        if config.data.path:
            from geolink_jax import family as family_lib
            from geolink_jax.data import outputs

            path = config.data.path
            if not outputs.is_remote(path) and not (pathlib.Path(path) / outputs.MANIFEST).exists():
                raise config_lib.ConfigError(f"--config.data.path {path}: no {outputs.MANIFEST} there "
                                             "(preprocess the data first, or leave data.path unset)")
            num = family_lib.get_family(config.family).num_examples(outputs.load_manifest(config.data.path), config)
        print(recipe.format_card(config, recipe.card(config, num)))
        return 0
    if not args.workdir:
        raise config_lib.ConfigError("pretrain needs --workdir (or --dry-run to print the recipe card)")
    from geolink_jax.train import trainer

    rows = trainer.train(config, args.workdir, progress=not args.no_progress)
    if rows:
        last = rows[-1]
        parts = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.endswith("_loss"))
        skipped = f"; {last['skipped_steps']} step(s) skipped as non-finite" if last.get("skipped_steps") else ""
        print(f"step {last['step']}: loss {last['loss']:.4f}" + (f" ({parts})" if parts else "") + skipped
              + f"; outputs in {args.workdir}")
    return 0


def _convert_parser(sub):
    families = _families()
    formats = "; ".join(f"{f.name}: " + ", ".join(f"{k} ({c.description})" for k, c in f.converters.items())
                        for f in families if f.converters)
    p = sub.add_parser("convert", help="weights between geolink_jax and other releases (official PyTorch, timm, "
                                       "torchgeo, transformers, …)",
                       description="import: a weight file (.pth via torch.load(weights_only=True), or .safetensors) → "
                                   "a geolink_jax weights directory. export: a geolink_jax weights directory or "
                                   "pretraining workdir → .safetensors (or .pth with torch). graphs: official .pt "
                                   f"graphs → .npz. Formats per family (the first is the default): {formats}.")
    p.add_argument("direction", choices=("import", "export", "graphs"),
                   help="graphs: official .pt HeteroData graphs (a file or directory) → native .npz (needs torch + "
                        "torch_geometric; loaded with weights_only=True)")
    p.add_argument("--src", required=True, help="import: weight file; export: weights directory or workdir; "
                                                "graphs: .pt file or directory")
    p.add_argument("--out", required=True, help="import / graphs: output directory; export: output file")
    p.add_argument("--format", default=None, help="a weight format of the family (see above; default: its first)")
    p.add_argument("--family", default=None,
                   help=f"import: model family ({', '.join(f.name for f in families)}; default: the one recorded in "
                        f"the file's metadata, else {families[0].name})")
    p.add_argument("--allow-nonfinite", action="store_true", help="convert weights that hold NaN/Inf (refused "
                                                                  "otherwise, naming the tensors)")
    seen = _option_strings(p)
    for f in families:
        for fmt, conv in f.converters.items():
            if conv.arguments:
                conv.arguments(_OnceGroup(p.add_argument_group(f"import --family {f.name} --format {fmt}"), seen))
    return p


def _converter(family_name, fmt):
    from geolink_jax import family as family_lib

    fam = family_lib.get_family(family_name)
    fmt = fmt or next(iter(fam.converters))
    if fmt not in fam.converters:
        raise ValueError(f"family {fam.name} has no weight format {fmt!r} (formats: {', '.join(fam.converters)})")
    return fmt, fam.converters[fmt]


def _converter_options(conv, args):
    """The values of the flags `conv.arguments` declares, by dest."""
    if conv.arguments is None:
        return {}
    declared = argparse.ArgumentParser(add_help=False)
    conv.arguments(declared)
    return {a.dest: getattr(args, a.dest) for a in declared._actions}


def import_weights(src, family=None, fmt=None, allow_nonfinite=False, args=None):
    """A weight file `convert import` reads → (family, format, params, model config, report with "recorded":
    whether the file's metadata gave the config). ConversionError (one line) for a file of another family or
    layout."""
    from geolink_jax import convert
    from geolink_jax import family as family_lib
    from geolink_jax.convert import params_store, rules
    from geolink_jax.convert.rules import ConversionError

    sd, meta = convert.load_weights(src)
    if not allow_nonfinite:
        params_store.check_finite(sd, src)
    record = params_store.recorded_config(meta)
    recorded = record is not None
    if recorded and family and family != record["family"]:
        raise ConversionError(f"{src}: its metadata records a {record['family']} model, not --family {family}; "
                              f"leave --family out (the file says which) or give --family {record['family']}")
    family = family or (record["family"] if recorded else next(iter(family_lib.FAMILIES)))
    cfg = params_store.config_from_record(record)[1] if recorded and record["family"] == family else None
    fmt, conv = _converter(family, fmt)
    options = _converter_options(conv, args) if args is not None else {}
    try:
        params, cfg, report = conv.from_state_dict(sd, cfg, src, **options)
    except KeyError as e:  # a converter inferring the config from tensors another layout does not have
        raise ConversionError(f"{src}: not a {family} {fmt} state dict (no tensor {e.args[0]!r}; "
                              f"{rules.key_summary(sd)})") from None
    return family, fmt, params, cfg, {**report, "recorded": recorded}


def cmd_convert(args):
    from geolink_jax import convert
    from geolink_jax.convert import params_store

    if args.direction == "graphs":
        from geolink_jax.convert import graphs

        written, errors = graphs.convert_pt_dir(args.src, args.out)
        for e in errors.values():
            print(f"error: {e}", file=sys.stderr)
        print(f"wrote {len(written)} .npz graphs → {args.out}" + (f"; {len(errors)} failed" if errors else ""))
        return 1 if errors else 0
    if args.direction == "import":
        family, fmt, params, cfg, report = import_weights(args.src, args.family, args.format, args.allow_nonfinite,
                                                          args)
        params_store.save_params(args.out, params, cfg)
        print(f"imported {report['converted']} tensors from {args.src} ({family} {fmt}; model config "
              f"{'from the file' if report['recorded'] else 'inferred from the tensors'}; listed unused: "
              f"{len(report.get('unused_listed', []))}) → {args.out}")
    else:
        family, params, cfg = params_store.load_params(args.src)
        params_store.check_params(params, family, cfg, args.src, allow_nonfinite=args.allow_nonfinite)
        fmt, conv = _converter(family, args.format)
        sd = conv.to_state_dict(params, cfg)
        model_config = conv.metadata(cfg) if conv.metadata else dict(architecture=None)
        model_config.update(params_store.config_record(cfg))  # `convert import` rebuilds the model from it
        convert.save_weights(sd, args.out, model_config)
        print(f"exported {len(sd)} tensors ({family} {fmt}) → {args.out}")
    return 0


def _merge_parser(sub):
    from geolink_jax.convert.merge import METHODS

    p = sub.add_parser("merge", help="merge weights of one family and config: model soup, task arithmetic, TIES, "
                                     "progressive",
                       description="Merges weights that share one model config (weights directories, pretraining "
                                   "workdirs, or files `convert import` reads) into a weights directory with "
                                   "model_config.json and merge.json (the inputs' paths and fingerprints, method, "
                                   "coefficients). Frozen parameters are taken from the base (or the first model) "
                                   "and must agree; see geolink_jax/convert/merge.py for each method's formula.")
    p.add_argument("--models", nargs="+", required=True, help="the models to merge, in order")
    p.add_argument("--base", default=None, help="the base (task_arithmetic, ties: required; progressive: the start)")
    p.add_argument("--method", choices=METHODS, default="average")
    p.add_argument("--coefficients", default=None,
                   help="comma-separated: average / task_arithmetic one per model, progressive one per step")
    p.add_argument("--scale", type=float, default=1.0, help="task_arithmetic, ties: the task vector's scale")
    p.add_argument("--density", type=float, default=0.2, help="ties: the share of each task vector kept")
    p.add_argument("--family", default=None, help="for weight files without recorded metadata")
    p.add_argument("--mesh", default=None,
                   help="merge on this process's devices, e.g. fsdp=8: each input restored straight into its shards "
                        "as in training and the arithmetic done on the devices (weights directories and workdirs; "
                        "default: on the host, streamed)")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def cmd_merge(args):
    import datetime

    from geolink_jax.convert import merge, params_store
    from geolink_jax.data import outputs

    mesh = None
    if args.mesh:
        from geolink_jax.train import sharding

        mesh = sharding.make_mesh(_parse_mesh(args.mesh))

    def load(path):
        if mesh is not None:
            return merge.load_sharded(path, mesh, report=lambda line: print(line, file=sys.stderr))
        if pathlib.Path(path).is_dir():
            return params_store.load_params(path)
        family, _, params, cfg, _ = import_weights(path, args.family)
        return params_store.Weights(family, params, cfg)

    try:
        coefficients = [float(c) for c in args.coefficients.split(",")] if args.coefficients else None
    except ValueError:
        raise merge.MergeError(f"--coefficients {args.coefficients}: comma-separated numbers") from None
    if not 0.0 < args.density <= 1.0:
        raise merge.MergeError(f"--density {args.density}: a share in (0, 1]")
    outputs.check_output(args.out, args.overwrite)  # before any loading
    seen = {}  # path → (fingerprint, family, config) of each input as merge loads it (one at a time)

    def loader(path):
        def load_once():
            w = load(path)
            if path not in seen:  # TIES loads each input twice: fingerprint it once
                seen[path] = (merge.fingerprint(w.params), w.family, w.config)
            return w
        return load_once

    params, counts = merge.merge(args.method, [loader(m) for m in args.models],
                                 loader(args.base) if args.base else None, coefficients, args.scale, args.density,
                                 names=list(args.models))
    _, family, config = seen[args.base or args.models[0]]
    roles = ([("base", args.base)] if args.base else []) + [("model", m) for m in args.models]
    record = dict(method=args.method, coefficients=coefficients, scale=args.scale, density=args.density,
                  family=family, counts=counts, created=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                  inputs=[dict(role=role, path=str(pathlib.Path(path).absolute()), fingerprint=seen[path][0])
                          for role, path in roles],
                  fingerprint=merge.fingerprint(params))

    def write(staging):
        params_store.save_params(staging, params, config)
        outputs.write_json(staging / "merge.json", record)

    outputs.staged_output(args.out, args.overwrite, write)
    print(f"merged {len(args.models)} {family} models ({args.method}; {counts['merged']} tensors merged, "
          f"{counts['frozen']} frozen taken from {'the base' if args.base else 'the first'}) → {args.out}")
    return 0


def _embed_parser(sub):
    p = sub.add_parser("embed", help="embeddings of a model's inputs → GeoParquet (tiles with footprints; GAIR "
                                     "patches, photos and points; DOFA-CLIP pairs and texts)",
                       description="Per input, the family's embeddings (GeoLink/MAE: unimodal cls and mean patch "
                                   "token, and GeoLink's mean of the hybrid fusion map, with each tile's footprint), "
                                   "written as GeoParquet. The model's family comes from --params.")
    p.add_argument("--params", default=None,
                   help="weights: a `convert import` directory or a pretraining workdir (latest checkpoint)")
    p.add_argument("--tiles", default=str(samples.OSM_TILES_DIR),
                   help="the inputs: tiles (a preprocessed shard directory, a UFZ-layout directory or raw tiles; "
                        "default: the bundled OSM tiles), or the family's preprocessed directory")
    p.add_argument("--out", default="out/embeddings.parquet")
    p.add_argument("--batch-size", type=int, default=8)
    seen, done = _option_strings(p), set()
    for f in _families():
        if f.embed_arguments and f.embed_arguments not in done:
            done.add(f.embed_arguments)
            f.embed_arguments(_OnceGroup(p, seen))
    return p


def cmd_embed(args):
    from geolink_jax import family as family_lib
    from geolink_jax.convert import params_store

    if not args.params:
        raise ValueError("--params is required (a converted weights directory or a pretraining workdir)")
    family, model = params_store.load_model(args.params)
    fam = family_lib.get_family(family)
    if fam.write_embeddings is None:
        raise ValueError(f"{args.params}: a {family} model; that family has no embeddings")
    check_embed_inputs(fam, args.tiles, args.params)
    print(fam.write_embeddings(model, args))
    return 0


def check_embed_inputs(fam, inputs, params):
    """A DataError naming the --tiles directory when it is not what the model's family embeds: another family's
    shards, or (for families that read only their own preprocessed shards) a directory without a manifest, such as
    the default, the bundled GeoLink tiles."""
    from geolink_jax import family as family_lib
    from geolink_jax.data import outputs, record_format
    from geolink_jax.data.shards import DataError

    if outputs.is_remote(inputs):
        return
    manifest = pathlib.Path(inputs) / outputs.MANIFEST
    if manifest.exists():
        problem = family_lib.data_problem(fam, json.loads(manifest.read_text()), inputs)
        if problem:
            raise DataError(problem)
    elif fam.record_format != record_format.FORMAT:
        default = " (the default: the bundled GeoLink tiles)" if str(inputs) == str(samples.OSM_TILES_DIR) else ""
        raise DataError(f"--tiles {inputs}{default}: no {outputs.MANIFEST}; {params} is a {fam.name} model, which "
                        f"embeds `geolink-jax preprocess --family {fam.name}` output: give --tiles DIR")


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


def _evaluate_parser(sub):
    p = sub.add_parser("evaluate", help="downstream evaluation sweeps: encoders (any family's weights, workdir "
                                        "checkpoints, random, raw pixels) × tasks × protocols × fractions × seeds",
                       description="Rows go to OUT/rows.jsonl as each cell finishes; a rerun skips finished cells; "
                                   "OUT/results.md and results.csv summarise them (geolink_jax/evaluate.py "
                                   "says what a sweep file holds).")
    p.add_argument("--config", required=True, help="sweep file (get_config() → encoders, tasks, protocols, "
                                                    "fractions, seeds, batch_size and the protocols' settings)")
    p.add_argument("--out", required=True, help="output directory (rows.jsonl, features/, results.md/csv)")
    p.add_argument("--follow", action="store_true",
                   help="keep going: evaluate each new checkpoint of the sweep's DIR@each workdirs as it appears, "
                        "until their runs have their last checkpoint or --idle seconds pass without a new one")
    p.add_argument("--poll", type=float, default=60.0, help="--follow: seconds between looks for new checkpoints")
    p.add_argument("--idle", type=float, default=3600.0, help="--follow: give up after this many seconds without one")
    p.add_argument("--no-progress", action="store_true")
    return p


def cmd_evaluate(args):
    from geolink_jax import evaluate

    settings = evaluate.load_sweep(args.config)
    if args.follow:
        ran = evaluate.follow(settings, args.out, args.poll, args.idle, progress=not args.no_progress)
    else:
        ran = evaluate.run(settings, args.out, progress=not args.no_progress)
    md = evaluate.report(args.out)
    print(md + f"{ran} cells run; rows in {args.out}/rows.jsonl")
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
    check_plan_mesh(args.devices, mesh)
    plan.ensure_devices(args.devices)  # before anything starts JAX's backend
    result = plan.plan(args.config, args.devices, mesh, chips, args.batch or None, overrides,
                       suggest=not args.no_suggest, hbm_gib=args.hbm_gib)
    print("\n".join(plan.format_plan(result)))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0


def check_plan_mesh(devices, mesh):
    """`plan --devices N [--mesh …]`: N ≥ 1 and a mesh whose axes (one of them may be -1) multiply to N, or one
    ConfigError line (exit 2)."""
    from geolink_jax.config import ConfigError

    if devices < 1:
        raise ConfigError(f"--devices {devices}: plan for at least 1 device")
    sizes = {k: int(v) for k, v in mesh.items()}
    bad = [f"{k}={v}" for k, v in sizes.items() if v == 0 or v < -1]
    if bad or list(sizes.values()).count(-1) > 1:
        raise ConfigError(f"mesh {sizes}: axis sizes are positive, with at most one -1 (the rest of the devices)")
    fixed = 1
    for v in sizes.values():
        fixed *= v if v > 0 else 1
    if (fixed != devices) if -1 not in sizes.values() else devices % fixed:
        raise ConfigError(f"mesh {sizes} does not fit {devices} devices (its fixed axes multiply to {fixed})")


def argv_is_cli():
    return pathlib.Path(sys.argv[0]).name in ("geolink-jax", "cli.py", "__main__.py")


def user_errors(command, family_commands):
    """The typed errors that are user mistakes or unusable inputs for `command` → their exit code (2: usage,
    1: data). Anything else is a bug and keeps its traceback."""
    from geolink_jax.config import ConfigError
    from geolink_jax.data.outputs import JobError
    from geolink_jax.data.shards import DataError
    from geolink_jax.train.checkpoint import CheckpointError, CheckpointMismatch
    from geolink_jax.train.workdir_lock import WorkdirInUse

    codes = {ConfigError: 2, CheckpointMismatch: 2, FileNotFoundError: 1, DataError: 1, CheckpointError: 1}
    if command in ("embed", "probe"):
        codes.update({ValueError: 1, KeyError: 1})
    if command == "pretrain":  # non-finite steps past the allowed fraction (or on_nonfinite="stop"); a held workdir
        codes.update({FloatingPointError: 1, WorkdirInUse: 1})
    if command == "preprocess":  # a --strict run stopped on a problem
        codes[JobError] = 1
    if command in ("convert", "merge"):  # ConversionError, MergeError are ValueErrors; .pth files need torch
        codes.update({ValueError: 1, ImportError: 1})
    if command in family_commands:
        codes.update({e: 1 for e in family_commands[command].user_errors})
    return codes


def main(argv=None):
    parser = argparse.ArgumentParser(prog="geolink-jax", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error reported in one line")
    sub = parser.add_subparsers(dest="command", required=True)
    _preprocess_parser(sub).set_defaults(func=cmd_preprocess)
    _pretrain_parser(sub).set_defaults(func=cmd_pretrain)
    _convert_parser(sub).set_defaults(func=cmd_convert)
    _merge_parser(sub).set_defaults(func=cmd_merge)
    _embed_parser(sub).set_defaults(func=cmd_embed)
    _probe_parser(sub).set_defaults(func=cmd_probe)
    _evaluate_parser(sub).set_defaults(func=cmd_evaluate)
    _bench_parser(sub).set_defaults(func=cmd_bench)
    _plan_parser(sub).set_defaults(func=cmd_plan)
    family_commands = {}
    for f in _families():
        for c in f.commands:
            family_commands[c.name] = c
            p = sub.add_parser(c.name, help=f"[{f.name}] {c.help}", description=c.description or None)
            c.arguments(p)
            p.set_defaults(func=c.run)
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("pretrain", "bench", "plan") or (
        args.command in family_commands and family_commands[args.command].overrides)
    if extra and not takes_overrides:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    codes = user_errors(args.command, family_commands)
    try:  # the one error boundary: typed library errors → one line and an exit code
        if args.command in family_commands:
            return args.func(args, extra)
        return args.func(args, extra) if takes_overrides else args.func(args)
    except tuple(codes) as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return next(code for cls, code in codes.items() if isinstance(e, cls))
    except KeyboardInterrupt:  # Ctrl-C before a command's own handler is in place (start-up, compilation)
        if args.debug:
            raise
        print(f"interrupted: {args.command} stopped before it began its work (nothing written)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
