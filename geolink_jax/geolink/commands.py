"""GeoLink's own `geolink-jax` subcommands: `finetune` (UperNet on the frozen fusion extractor) and `attention`
(the fusion block's node→image attention for one OSM node)."""

import json
import pathlib

from geolink_jax import family as family_lib
from geolink_jax import samples


def _weights_and_tiles(p, tiles_default, tiles_help):
    p.add_argument("--params", default=None,
                   help="weights: a `convert import` directory or a pretraining workdir (latest checkpoint)")
    p.add_argument("--tiles", default=tiles_default, help=tiles_help)
    p.add_argument("--encoder", default="e5", help="tag encoder for raw OSM tiles (must match the pretraining's)")
    p.add_argument("--batch-size", type=int, default=8)


def _load_geolink(args):
    from geolink_jax.convert import params_store

    if not args.params:
        raise ValueError("--params is required (a converted weights directory or a pretraining workdir)")
    family, model = params_store.load_model(args.params)
    if family != "geolink":
        raise ValueError(f"{args.params}: a {family} model; this command needs a GeoLink model (image + OSM fusion)")
    return model


def _finetune_arguments(p):
    _weights_and_tiles(p, str(samples.UFZ_DIR), "labelled tiles (default: the bundled UFZ tiles)")
    p.add_argument("--eval-tiles", default=None, help="tiles to score (default: the training tiles)")
    p.add_argument("--workdir", default="out/finetune")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=512, help="UperNet width (reference: 512)")
    p.add_argument("--num-classes", type=int, default=9)
    p.set_defaults(batch_size=2)


def _finetune(args, overrides=()):
    from geolink_jax.geolink import segmentation
    from geolink_jax.tiles import downstream as tiles

    model = _load_geolink(args)
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
        print(f"  {name:18s} IoU {iou:.3f}  F1 {f1:.3f}")
    print(f"wrote {args.workdir}/head.safetensors, scores.json, segmentation.png")
    (pathlib.Path(args.workdir) / "command.json").write_text(json.dumps(vars(args), indent=1, default=str))
    return 0


def _attention_arguments(p):
    _weights_and_tiles(p, str(samples.OSM_TILES_DIR), "tiles (default: the bundled OSM tiles)")
    p.add_argument("--tile", default=None, help="tile id (default: the first)")
    p.add_argument("--node", type=int, default=0, help="index among the tile's fusion nodes (type-major order)")
    p.add_argument("--out", default="out/attention.png")


def _attention(args, overrides=()):
    from geolink_jax.geolink import attention
    from geolink_jax.tiles import downstream as tiles

    model = _load_geolink(args)
    tile_list = tiles.load_tiles(args.tiles, model.cfg.vit.image_size, encoder=args.encoder)
    tile = next((t for t in tile_list if args.tile in (None, t.tile_id)), None)
    if tile is None:
        raise ValueError(f"no tile {args.tile!r} under {args.tiles}")
    pic, info = attention.node_attention_picture(model, tile, args.node)
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pic.save(args.out)
    print(f"{tile.tile_id}: node {args.node} ({info['type']} #{info['row']}) of {info['num_nodes']} → {args.out}")
    return 0


COMMANDS = (
    family_lib.Command(
        "finetune", "UperNet segmentation on the frozen GeoLink fusion extractor", _finetune_arguments, _finetune,
        description="Train the UperNet head (spec §3.9) on labelled tiles with the encoder frozen; report mIoU and "
                    "per-class F1; write head.safetensors (reference SegUPerNet head names), scores.json, "
                    "metrics.jsonl and segmentation.png to the workdir.",
        user_errors=(ValueError, KeyError)),
    family_lib.Command(
        "attention", "picture of the fusion block's node→image attention for one OSM node", _attention_arguments,
        _attention, user_errors=(ValueError, KeyError)),
)
