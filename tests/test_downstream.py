"""Downstream use: segmentation metrics on hand-made maps, UperNet fine-tuning on the bundled UFZ tiles, embeddings
as GeoParquet, probes, the node→image attention picture, the official .pt graph import, and the CLI chain
convert → embed → finetune → probe."""

import pickle

import geopandas as gpd
import jax
import numpy as np
import pytest
from flax import nnx
from model_helpers import tiny_config

from geolink_jax import cli, samples
from geolink_jax.convert import files, params_store
from geolink_jax.convert import upernet as convert_upernet
from geolink_jax.downstream import embed, metrics, probe
from geolink_jax.downstream.upernet import UperNet
from geolink_jax.geolink import attention, segmentation
from geolink_jax.geolink import embed as geolink_embed
from geolink_jax.geolink.model import GeoLink
from geolink_jax.osm import NODE_TYPES, osm_graph
from geolink_jax.tiles import downstream as tiles


@pytest.fixture(scope="module")
def ufz_tiles():
    return tiles.load_tiles(samples.UFZ_DIR, 64)


@pytest.fixture(scope="module")
def tiny_geolink():
    return GeoLink(tiny_config(), rngs=nnx.Rngs(0))


def test_metrics_on_hand_made_maps():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])  # the last pixel is ignored whatever it predicts
    conf = np.asarray(metrics.confusion_matrix(pred, target, 4))
    np.testing.assert_array_equal(conf, [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    s = metrics.scores(conf)
    np.testing.assert_allclose(s["iou"][:3], [1 / 2, 2 / 3, 1.0])
    assert np.isnan(s["iou"][3])  # class 3 occurs nowhere: not counted in the mean
    np.testing.assert_allclose(s["miou"], (1 / 2 + 2 / 3 + 1) / 3)
    np.testing.assert_allclose(s["precision"][:3], [1.0, 2 / 3, 1.0])
    np.testing.assert_allclose(s["recall"][:3], [1 / 2, 1.0, 1.0])
    np.testing.assert_allclose(s["f1"][:3], [2 / 3, 4 / 5, 1.0])
    np.testing.assert_allclose(s["mean_f1"], (2 / 3 + 4 / 5 + 1) / 3)
    np.testing.assert_allclose(s["pixel_accuracy"], 4 / 5)
    # the UFZ maps' 9 and 255 are both ignored
    np.testing.assert_array_equal(tiles.remap_labels(np.array([0, 8, 9, 255]), 9), [0, 8, 255, 255])


def test_ufz_tiles_load_with_labels_and_unknown_footprints(ufz_tiles):
    assert len(ufz_tiles) == 6
    for t in ufz_tiles:
        assert t.image.shape == (64, 64, 3) and t.label.shape == (64, 64)
        assert set(np.unique(t.label)) <= set(range(9)) | {255}
        assert t.bbox_lonlat is None  # UFZ tiles carry no georeference
    assert any((t.label == 255).any() for t in ufz_tiles)


@pytest.mark.slow
def test_finetune_loss_decreases_and_outputs_reload(ufz_tiles, tiny_geolink, tmp_path):
    cfg = segmentation.FinetuneConfig(steps=40, batch_size=2, channels=32, lr=3e-3, seed=0)
    seg, history, result = segmentation.finetune(tiny_geolink, ufz_tiles, ufz_tiles, cfg, workdir=tmp_path,
                                                 progress=False)
    losses = np.array([h["loss"] for h in history])
    assert np.isfinite(losses).all()
    assert losses[-10:].mean() < 0.8 * losses[:10].mean(), losses
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["mean_f1"] <= 1.0
    assert result["classes"][0] == "water" and len(result["iou"]) == 9
    # the encoder stayed frozen: its weights are the ones it came with
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), seg.enc_params, nnx.state(tiny_geolink, nnx.Param))
    assert all(jax.tree.leaves(same))
    # the saved head (reference names) reloads into a fresh head and predicts the same
    sd, meta = files.load_weights(tmp_path / "head.safetensors")
    assert "conv_seg.weight" in sd and "psp_modules.3.2.running_var" in sd
    head = UperNet(segmentation.head_config(tiny_geolink.cfg, cfg), rngs=nnx.Rngs(7))
    convert_upernet.load_torch_state_dict(head, sd)
    head.eval()
    _, images, graph, _ = next(tiles.batches(ufz_tiles[:2], 2))
    maps = tiny_geolink.extract(images, graph)
    np.testing.assert_array_equal(np.argmax(np.asarray(head(maps, (64, 64))), -1),
                                  np.asarray(seg.predict(images, graph)))
    for name in ("scores.json", "metrics.jsonl", "segmentation.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_embed_geoparquet_footprints_and_maps(tiny_geolink, tmp_path):
    osm = tiles.load_tiles(samples.OSM_TILES_DIR, 64, encoder="hash:512")
    rows, maps = geolink_embed.embed(tiny_geolink, osm, batch_size=4, progress=False)
    gdf = embed.write_geoparquet(rows, tmp_path / "e.parquet")
    back, x = embed.read_embeddings(tmp_path / "e.parquet", "cls")
    assert back.crs.to_epsg() == 4326 and len(back) == len(osm) == 5
    for t, geom in zip(osm, back.geometry):
        np.testing.assert_allclose(geom.bounds, t.bbox_lonlat)
    assert x.shape == (5, 32) and maps["patch"].shape == (5, 4, 4, 32) and maps["fusion"].shape == (5, 4, 4, 32)
    # the unimodal embedding of a tile does not depend on its batch (padding the last batch included)
    rows1, _ = geolink_embed.embed(tiny_geolink, osm[4:], batch_size=1, progress=False)
    np.testing.assert_allclose(rows1[0]["cls"], rows[4]["cls"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows[0]["mean"], maps["patch"][0].mean((0, 1)), rtol=1e-6)
    assert gdf["tile_id"].tolist() == [t.tile_id for t in osm]


def test_a_smaller_last_batch_is_not_padded_so_batch_mates_stay_real(tiny_geolink, ufz_tiles):
    """The faithful graph LayerNorm's statistics span the batch: padding the last batch with copies of a tile
    shifted every tile's fusion map. The 6 UFZ tiles at batch size 8 equal one unpadded batch of 6."""
    rows, maps = geolink_embed.embed(tiny_geolink, ufz_tiles, batch_size=8, progress=False)
    chunk, images, graph, _ = next(tiles.batches(ufz_tiles, 6))
    direct = geolink_embed.make_embed_fn(tiny_geolink)(images, graph)
    np.testing.assert_allclose(maps["fusion"], np.asarray(direct["fusion"]), rtol=1e-5, atol=1e-6)
    # …and with the batch-wide norm the fusion map depends on the batch mates (graph_norm='per_graph' avoids it)
    _, alone = geolink_embed.embed(tiny_geolink, ufz_tiles[:1], batch_size=1, progress=False)
    assert not np.allclose(alone["fusion"][0], maps["fusion"][0], rtol=1e-4, atol=1e-5)


def test_probes_separate_clusters_and_do_not_leak():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 4
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(size=(60, 16))
    assert probe.cross_validate(x, y, "linear", folds=5)["accuracy"] >= 0.95
    assert probe.cross_validate(x, y, "knn", folds=5, k=5)["accuracy"] >= 0.95
    # labels unrelated to the features: a 1-NN that saw its own test sample would score 1.0
    noise = rng.normal(size=(40, 16))
    assert probe.cross_validate(noise, rng.integers(0, 4, 40), "knn", folds=5, k=1)["accuracy"] < 0.6
    # a hand example: the two nearest (cosine) training points vote class 1
    pred = probe.knn(np.array([[1, 0], [0.9, 0.1], [0, 1.0]]), np.array([1, 1, 0]), np.array([[1.0, 0.05]]), 2, k=2)
    assert pred.tolist() == [1]


def test_node_attention_map(ufz_tiles, tiny_geolink, tmp_path):
    att = attention.node_attention(tiny_geolink, ufz_tiles[0])
    n = int(att["valid"].sum())
    assert n == min(50, sum(ufz_tiles[0].graph.num_nodes(t) for t in NODE_TYPES))
    np.testing.assert_allclose(att["attention"][:n].sum(-1), 1.0, rtol=1e-5)  # a softmax over the image tokens
    t0 = att["node_type"][0]
    np.testing.assert_allclose(att["node_xy"][0], ufz_tiles[0].graph.positions[t0][att["node_row"][0]][
        attention._ANCHOR[t0]])
    pic, info = attention.node_attention_picture(tiny_geolink, ufz_tiles[0], 1)
    assert pic.size == (448, 448) and info["num_nodes"] == n
    with pytest.raises(ValueError, match="out of range"):
        attention.node_attention_picture(tiny_geolink, ufz_tiles[0], n)


def test_extractor_dropout_only_with_a_key(ufz_tiles, tiny_geolink):
    """encoder_dropout (the reference's frozen encoder in train mode): the fusion map drops out, the ViT maps don't."""
    _, images, graph, _ = next(tiles.batches(ufz_tiles[:2], 2))
    plain = tiny_geolink.extract(images, graph)
    again = tiny_geolink.extract(images, graph)
    dropped = tiny_geolink.extract(images, graph, dropout_key=jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(plain[-1]), np.asarray(again[-1]))
    assert not np.allclose(np.asarray(plain[-1]), np.asarray(dropped[-1]))
    for a, b in zip(plain[:-1], dropped[:-1]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


torch = pytest.importorskip("torch")


def _same_graph(a, b):
    return (all(np.array_equal(a.features[t], b.features[t]) and np.array_equal(a.positions[t], b.positions[t])
                for t in NODE_TYPES)
            and all(np.array_equal(a.edge_index[r], b.edge_index[r]) and np.array_equal(a.edge_attr[r], b.edge_attr[r])
                    for r in a.edge_index))


def test_pt_graph_import_round_trip_and_refuses_pickles(tmp_path):
    pytest.importorskip("torch_geometric")
    from torch_geometric.data import HeteroData

    from geolink_jax.convert import graphs

    g = osm_graph.graph_from_npz(samples.UFZ_DIR / "graph" / "chicago_15008_19040.npz")
    data = HeteroData()
    for t in NODE_TYPES:
        data[t].x = torch.from_numpy(np.concatenate([g.features[t], g.positions[t]], 1))
    for r in g.edge_index:
        s, d = r.split("_to_")
        data[s, "to", d].edge_index = torch.from_numpy(g.edge_index[r])
        data[s, "to", d].edge_attr = torch.from_numpy(g.edge_attr[r])
    torch.save(data, tmp_path / "a.pt")
    back = graphs.load_pyg_graph(tmp_path / "a.pt")
    assert _same_graph(back, g)
    graphs.save_npz(back, tmp_path / "a.npz")
    assert _same_graph(osm_graph.graph_from_npz(tmp_path / "a.npz"), g)

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(Evil(), f)
    with pytest.raises(graphs.ConversionError, match="evil.pt"):
        graphs.load_pyg_graph(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()
    # a directory with one bad file: the good ones are written, the bad one reported
    written, errors = graphs.convert_pt_dir(tmp_path, tmp_path / "out", progress=False)
    assert [p.name for p in written] == ["a.npz"] and list(errors) == [str(tmp_path / "evil.pt")]


def test_official_pt_graphs_equal_the_bundled_npz(tmp_path):
    """The real official .pt files (kept out of the repository; read from ../shared, present in CI)."""
    pytest.importorskip("torch_geometric")
    src = samples.SAMPLE_DIR.parents[2] / "shared" / "data" / "geolink_examples" / "ufz" / "graph"
    if not src.exists():
        pytest.skip(f"{src} not present (the official .pt examples ship only in ../shared)")
    assert cli.main(["convert", "graphs", "--src", str(src), "--out", str(tmp_path)]) == 0
    names = samples.ufz_tile_names()
    assert sorted(p.stem for p in tmp_path.glob("*.npz")) == names
    for n in names:
        assert _same_graph(osm_graph.graph_from_npz(tmp_path / f"{n}.npz"),
                           osm_graph.graph_from_npz(samples.UFZ_DIR / "graph" / f"{n}.npz")), n


@pytest.mark.slow
def test_cli_convert_embed_finetune_probe(tiny_geolink, tmp_path, capsys):
    """The README's downstream walk-through on the bundled data, with a tiny model standing in for a checkpoint."""
    params_store.save_params(tmp_path / "w", nnx.to_pure_dict(nnx.state(tiny_geolink, nnx.Param)), tiny_geolink.cfg)
    assert cli.main(["convert", "export", "--src", str(tmp_path / "w"), "--out", str(tmp_path / "g.safetensors")]) == 0
    assert cli.main(["convert", "import", "--src", str(tmp_path / "g.safetensors"), "--out", str(tmp_path / "w2")]) == 0
    ufz = str(samples.UFZ_DIR)
    assert cli.main(["embed", "--params", str(tmp_path / "w2"), "--tiles", ufz, "--out", str(tmp_path / "e.parquet"),
                     "--maps", str(tmp_path / "m.npz")]) == 0
    gdf = gpd.read_parquet(tmp_path / "e.parquet")
    assert len(gdf) == 6 and gdf.geometry.isna().all() and (gdf["label_majority"] >= 0).all()
    assert np.load(tmp_path / "m.npz")["fusion"].shape == (6, 4, 4, 32)
    assert cli.main(["finetune", "--params", str(tmp_path / "w2"), "--workdir", str(tmp_path / "ft"), "--steps", "3",
                     "--channels", "16"]) == 0
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "ft" / "segmentation.png").exists()
    assert cli.main(["probe", "--embeddings", str(tmp_path / "e.parquet"), "--method", "knn", "--k", "3"]) == 0
    assert "knn probe on mean (6 tiles" in capsys.readouterr().out
    assert cli.main(["embed", "--params", str(tmp_path / "missing"), "--tiles", ufz]) == 1


def test_embed_refuses_tiles_whose_tag_width_differs_from_the_model(tiny_geolink, tmp_path, capsys):
    params_store.save_params(tmp_path / "w", nnx.to_pure_dict(nnx.state(tiny_geolink, nnx.Param)), tiny_geolink.cfg)
    assert cli.main(["embed", "--params", str(tmp_path / "w"), "--tiles", str(samples.OSM_TILES_DIR), "--encoder",
                     "hash:64", "--out", str(tmp_path / "e.parquet")]) == 1
    err = capsys.readouterr().err
    assert "the tiles' tag features are 64-d, the model takes 512-d" in err and len(err.strip().splitlines()) == 1
