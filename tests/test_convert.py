"""Checkpoint conversion: key coverage against the official state_dict layout, exact round trips, clear errors, and
numerical parity with independent PyTorch implementations (timm ViT, torch_geometric GATConv/HeteroConv,
LayerNorm(mode='graph'), Set2Set, torch.nn.MultiheadAttention in the two-way block), each randomly initialised,
converted and compared in float32."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import batch, np_params, tiny_config, tiny_model, ufz_graphs

from geolink_jax import family as family_lib
from geolink_jax.convert import files
from geolink_jax.geolink import convert
from geolink_jax.geolink.model import GeoLinkConfig
from geolink_jax.osm import NODE_TYPES, RELATION_NAMES, RELATIONS

OFFICIAL_KEYS = json.loads((pathlib.Path(__file__).parent / "data" / "official_geolink_vit_l_keys.json").read_text())[
    "keys"]


def _abstract_params(cfg):
    return family_lib.abstract_params("geolink", cfg)


def _merge(model, params):
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    return model


def _zeros(shape):
    return np.broadcast_to(np.float32(0), tuple(shape))  # no memory for the 330M-parameter layout


def test_every_official_vit_l_key_is_used_or_listed_and_export_recreates_the_layout():
    cfg = GeoLinkConfig()  # the released model: ViT-L/16, 512-d tag features
    target = _abstract_params(cfg)
    sd = {k: _zeros(s) for k, s in OFFICIAL_KEYS.items()}
    params, report = convert.params_from_official(sd, target)
    assert report["converted"] == len(OFFICIAL_KEYS) - len(convert.OFFICIAL_UNUSED)
    assert set(report["unused_listed"]) == set(convert.OFFICIAL_UNUSED)
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda x: x.shape, target)
    exported = convert.official_state_dict(params, cfg)
    assert {k: list(v.shape) for k, v in exported.items()} == OFFICIAL_KEYS


def test_older_pyg_hetero_keys_are_accepted():
    cfg = tiny_config()
    params = np_params(tiny_model())
    sd = convert.official_state_dict(params, cfg, hetero_key="{s}__to__{d}")
    assert "osm_encoder.convs.0.convs.point__to__line.lin.weight" in sd
    back, report = convert.params_from_official(sd, _abstract_params(cfg))
    assert report["hetero_key_format"] == "{s}__to__{d}"
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_round_trip_is_exact_and_errors_name_the_key(tmp_path):
    cfg = tiny_config()
    params = np_params(tiny_model(seed=3))
    sd = convert.official_state_dict(params, cfg)
    path = files.save_weights(sd, tmp_path / "geolink.safetensors", model_config={"architecture": "tiny"})
    loaded, config = files.load_weights(path)
    assert config == {"architecture": "tiny"}
    back, _ = convert.params_from_official(loaded, _abstract_params(cfg))
    jax.tree.map(np.testing.assert_array_equal, back, params)

    target = _abstract_params(cfg)
    with pytest.raises(convert.ConversionError, match="unused key 'head.weight'"):
        convert.params_from_official({**sd, "head.weight": np.zeros((3, 3))}, target)
    broken = dict(sd)
    del broken["img_decoder_pred.bias"]
    with pytest.raises(convert.ConversionError, match="missing key 'img_decoder_pred.bias'"):
        convert.params_from_official(broken, target, source="ckpt.pth")
    broken = {**sd, "osm_node_pred.weight": np.zeros((5, 7), np.float32)}
    with pytest.raises(convert.ConversionError, match=r"ckpt.pth: osm_node_pred.weight: shape \(5, 7\)"):
        convert.params_from_official(broken, target, source="ckpt.pth")


def test_torch_files_load_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    cfg = tiny_config()
    sd = convert.official_state_dict(np_params(tiny_model()), cfg)
    path = files.save_weights(sd, tmp_path / "geolink.pth", model_config={"architecture": "tiny"})
    loaded, config = files.load_weights(path)
    assert config["architecture"] == "tiny" and set(loaded) == set(sd)

    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"model_state_dict": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth: not a plain weights file"):
        files.load_weights(tmp_path / "evil.pth")


# ------------------------------------------------------------------ parity with independent implementations
def _torch_sd(module, prefix=""):
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def test_timm_vit_parity_every_block_and_strict_export():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from geolink_jax.nn import pos_embed

    cfg = tiny_config()  # ViT 64 px, patch 16, width 32, depth 2, 4 heads
    v = cfg.vit
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.width, depth=v.depth, num_heads=v.num_heads,
        num_classes=0, global_pool="").eval()
    with torch.no_grad():  # GeoLink's fixed table; biases and cls randomised so that no term is trivially zero
        ref.pos_embed.copy_(torch.from_numpy(pos_embed.image_table(v.width, v.grid, v.grid)[None]))
        for name, p in ref.named_parameters():
            if name.endswith("bias") or name == "cls_token" or name.endswith("norm1.weight"):
                p.normal_(0, 0.5)
    model = tiny_model()
    params, report = convert.params_from_timm(_torch_sd(ref), _abstract_params(cfg))
    assert report["pos_embed_max_abs_diff"] < 1e-6
    _merge(model, {**np_params(model), **params})

    images = np.random.default_rng(0).normal(size=(2, v.image_size, v.image_size, 3)).astype(np.float32)
    with torch.no_grad():
        x = ref._pos_embed(ref.patch_embed(torch.from_numpy(images).permute(0, 3, 1, 2)))
        theirs = []
        for blk in ref.blocks:
            x = blk(x)
            theirs.append(x.numpy())
        final = ref.norm(x).numpy()
    tokens, _ = model._embed_patches(jnp.asarray(images))
    x = model._with_cls(tokens)
    for i, blk in enumerate(model.img_encoder.blocks):
        x = blk(x)
        np.testing.assert_allclose(np.asarray(x), theirs[i], rtol=1e-4, atol=1e-4 * np.abs(theirs[i]).max(),
                                   err_msg=f"block {i}")
    # GeoLink's img_norm has eps 1e-5, timm's norm 1e-6 (spec §3.11): equal to ~1e-5 relative
    np.testing.assert_allclose(np.asarray(model.img_norm(x)), final, rtol=1e-4, atol=1e-4)

    # export → a fresh timm model loads it strictly and computes the same tokens
    exported = convert.timm_state_dict(np_params(model), cfg)
    fresh = timm.models.vision_transformer.VisionTransformer(
        img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.width, depth=v.depth, num_heads=v.num_heads,
        num_classes=0, global_pool="").eval()
    fresh.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in exported.items()}, strict=True)
    with torch.no_grad():
        out = fresh.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(out, final, rtol=1e-4, atol=1e-4)


def test_timm_vit_b_export_matches_timm_layout():
    timm = pytest.importorskip("timm")
    cfg = GeoLinkConfig(vit=GeoLinkConfig().vit.__class__(768, 12, 12))
    ref = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, global_pool="")
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    params = jax.tree.map(lambda s: _zeros(s.shape), _abstract_params(cfg))
    exported = convert.timm_state_dict(params, cfg)
    assert {k: v.shape for k, v in exported.items()} == shapes


def _hetero_inputs(graphs):
    """The UFZ graphs concatenated as torch_geometric expects (x_dict, edge_index_dict), with node offsets."""
    import torch

    x, offsets = {}, {}
    for t in NODE_TYPES:
        sizes = [g.num_nodes(t) for g in graphs]
        offsets[t] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        x[t] = torch.from_numpy(np.concatenate([g.features[t] for g in graphs]).astype(np.float32))
    edges = {}
    for (s, d), r in zip(RELATIONS, RELATION_NAMES):
        src = np.concatenate([g.edge_index[r][0] + offsets[s][i] for i, g in enumerate(graphs)])
        dst = np.concatenate([g.edge_index[r][1] + offsets[d][i] for i, g in enumerate(graphs)])
        edges[(s, "to", d)] = torch.from_numpy(np.stack([src, dst]).astype(np.int64))
    return x, edges


def test_pyg_heteroconv_gat_graph_layernorm_and_set2set_parity():
    torch = pytest.importorskip("torch")
    pyg = pytest.importorskip("torch_geometric.nn")

    torch.manual_seed(0)
    hetero = pyg.HeteroConv({(s, "to", d): pyg.GATConv(512, 128, add_self_loops=False) for s, d in RELATIONS},
                            aggr="mean").eval()
    norms = {t: pyg.LayerNorm(128) for t in NODE_TYPES}
    readouts = {t: pyg.Set2Set(128, processing_steps=5) for t in NODE_TYPES}
    with torch.no_grad():
        for module in (*norms.values(), *(c for c in hetero.convs.values())):
            for name, p in module.named_parameters():
                if name in ("weight", "bias") or name.endswith("bias"):
                    p.normal_(0, 0.5)
    sd = _torch_sd(hetero, "osm_encoder.convs.0.")
    for t in NODE_TYPES:
        sd.update(_torch_sd(norms[t], f"osm_norm.{t}."))
        sd.update(_torch_sd(readouts[t], f"osm_read_out.{t}."))

    cfg = tiny_config(osm_hidden=128)
    model = tiny_model(osm_hidden=128)
    target = {k: v for k, v in _abstract_params(cfg).items() if k in ("osm_encoder", "osm_norm", "osm_read_out")}
    params, report = convert.params_from_official(sd, target)
    assert report["converted"] == len(sd)
    _merge(model, {**np_params(model), **params})

    graphs = ufz_graphs()[:4]
    x, edges = _hetero_inputs(graphs)
    with torch.no_grad():
        out = hetero(x, edges)
        out = {t: norms[t](v.relu()) for t, v in out.items()}  # LayerNorm(mode='graph') over the whole batch
        sizes = {t: [g.num_nodes(t) for g in graphs] for t in NODE_TYPES}
        index = {t: torch.repeat_interleave(torch.arange(len(graphs)), torch.tensor(sizes[t])) for t in NODE_TYPES}
        pooled = {t: readouts[t](out[t], index[t], dim_size=len(graphs)).numpy() for t in NODE_TYPES}
    gb = batch(graphs)
    emb, _ = model.encode_graph(gb, key=None)
    for t in NODE_TYPES:
        ours = np.concatenate([np.asarray(emb[t][i, : g.num_nodes(t)]) for i, g in enumerate(graphs)])
        np.testing.assert_allclose(ours, out[t].numpy(), rtol=1e-4, atol=1e-4, err_msg=t)
        slots = model.osm_read_out[t](emb[t].astype(jnp.float32), gb.node_mask(t))
        has = np.array(sizes[t]) > 0
        np.testing.assert_allclose(np.asarray(slots)[has], pooled[t][has], rtol=1e-4, atol=1e-4, err_msg=t)


def test_torch_multihead_attention_two_way_block_parity():
    torch = pytest.importorskip("torch")
    from torch import nn

    dim, heads = 32, 4

    class TwoWay(nn.Module):  # spec §3.5, written from the spec with torch's own MultiheadAttention
        def __init__(self):
            super().__init__()
            self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm1 = nn.LayerNorm(dim)
            self.cross_attn_token_to_image = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm2 = nn.LayerNorm(dim)
            self.cross_attn_image_to_token = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm3 = nn.LayerNorm(dim)
            self.mlp = nn.Linear(dim, dim)
            self.norm4 = nn.LayerNorm(dim)

        def forward(self, q, k, qpe, kpe, pad):
            k = self.norm1(k + self.self_attn(k + kpe, k + kpe, k, key_padding_mask=pad)[0])
            q = self.norm2(q + self.cross_attn_token_to_image(q + qpe, k + kpe, k, key_padding_mask=pad)[0])
            out, attn = self.cross_attn_image_to_token(k + kpe, q + qpe, q)
            k = self.norm4(self.mlp(self.norm3(k + out)))
            return q, k, attn

    torch.manual_seed(0)
    ref = TwoWay().eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "bias" in name or "norm" in name:
                p.normal_(0, 0.5)
    cfg = tiny_config(fusion_dim=dim, fusion_heads=heads)
    model = tiny_model(fusion_dim=dim, fusion_heads=heads)
    target = {"osm_cross_modal_encoder": _abstract_params(cfg)["osm_cross_modal_encoder"]}
    params, _ = convert.params_from_official(_torch_sd(ref, "osm_cross_modal_encoder.0."), target)
    _merge(model, {**np_params(model), **params})

    rng = np.random.default_rng(0)
    img, ipe = (rng.normal(size=(2, 16, dim)).astype(np.float32) for _ in range(2))
    nodes, npe = (rng.normal(size=(2, 6, dim)).astype(np.float32) for _ in range(2))
    valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    with torch.no_grad():
        q, k, attn = ref(*(torch.from_numpy(a) for a in (img, nodes, ipe, npe)), torch.from_numpy(~valid))
    block = model.osm_cross_modal_encoder[0]
    q2, k2, attn2 = block(jnp.asarray(img), jnp.asarray(nodes), jnp.asarray(ipe), jnp.asarray(npe),
                          jnp.asarray(valid), return_attention=True)
    np.testing.assert_allclose(np.asarray(q2), q.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(k2)[valid], k.numpy()[valid], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(attn2)[valid], attn.numpy()[valid], rtol=1e-4, atol=1e-5)


def test_cli_export_then_import_round_trips_both_formats(tmp_path):
    from geolink_jax import cli
    from geolink_jax.convert import params_store

    cfg = tiny_config()
    params = np_params(tiny_model(seed=5))
    params_store.save_params(tmp_path / "ours", params, cfg)
    heads = ["--heads", "4", "--decoder-heads", "4", "--fusion-heads", "4"]
    for fmt in ("official", "timm"):
        out = tmp_path / f"{fmt}.safetensors"
        assert cli.main(["convert", "export", "--src", str(tmp_path / "ours"), "--out", str(out),
                         "--format", fmt]) == 0
        # the export records the family and model config: the import needs no --heads
        assert cli.main(["convert", "import", "--src", str(out), "--out", str(tmp_path / f"back_{fmt}"),
                         "--format", fmt]) == 0
        family, back, back_cfg = params_store.load_params(tmp_path / f"back_{fmt}")
        assert family == "geolink"
        assert back_cfg.vit == cfg.vit
        assert back_cfg == cfg
        if fmt == "official":
            jax.tree.map(np.testing.assert_array_equal, back, params)
        else:  # the image branch comes back; the rest is a fresh initialisation
            for k in ("img_encoder", "cls_token", "img_norm"):
                jax.tree.map(np.testing.assert_array_equal, back[k], params[k])
    sd, _ = files.load_weights(tmp_path / "official.safetensors")
    sd["img_norm.weight"] = sd["img_norm.weight"][:-1]
    files.save_weights(sd, tmp_path / "bad.safetensors")
    assert cli.main(["convert", "import", "--src", str(tmp_path / "bad.safetensors"), "--out",
                     str(tmp_path / "x"), *heads]) == 1
