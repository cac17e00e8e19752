"""The GeoLink module end to end on tiny configs and the real UFZ graphs: shapes, dtypes, losses, gradients,
empty graphs, compilation count, the downstream extractor, parameter naming and the ViT-L parameter count."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from model_helpers import batch, budget_for, images, tiny_config, tiny_model, ufz_graphs

from geolink_jax.geolink import param_count
from geolink_jax.geolink.model import PARAMETER_NAMES, GeoLink, GeoLinkConfig
from geolink_jax.nn import losses
from geolink_jax.nn.vit import VIT_PRESETS
from geolink_jax.osm import NODE_TYPES


def _empty_like(g):
    """A graph with no node of any type (and so no edge)."""
    return dataclasses.replace(
        g,
        features={t: g.features[t][:0] for t in NODE_TYPES},
        positions={t: g.positions[t][:0] for t in NODE_TYPES},
        labels={t: [] for t in NODE_TYPES},
        edge_index={r: e[:, :0] for r, e in g.edge_index.items()},
    )


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def ufz_batch():
    return batch(ufz_graphs()[:4])


def _loss_fn(**kw):
    return jax.jit(lambda m, x, g, k: m.loss(x, g, k, **kw))


def test_loss_shapes_and_dtypes(model, ufz_batch):
    total, aux = _loss_fn(return_outputs=True)(model, images(4), ufz_batch, jax.random.key(0))
    assert total.shape == () and total.dtype == jnp.float32 and np.isfinite(total)
    for k in ("img_loss", "contrastive_loss", "node_loss", "contrastive_accuracy"):
        assert aux[k].shape == () and aux[k].dtype == jnp.float32 and np.isfinite(aux[k]), k
    np.testing.assert_allclose(total, aux["img_loss"] + aux["contrastive_loss"] + aux["node_loss"], rtol=1e-6)
    assert aux["pred"].shape == (4, 16, 16 * 16 * 3) and aux["mask"].shape == (4, 16)
    np.testing.assert_array_equal(np.asarray(aux["mask"]).sum(1), 16 - 4)  # int(16 * 0.25) = 4 kept
    assert aux["node_index"].shape == (4, 10) and aux["node_pred"].shape == (4, 10, 512)
    # each UFZ graph has >= 3 nodes, and every masked node (≤10) is used
    assert 1 <= float(aux["masked_nodes_per_sample"]) <= 10
    assert int(aux["samples_without_nodes"]) == 0


def test_encoder_sees_exactly_the_visible_tokens(model):
    enc = model.encode_image(images(3), jax.random.key(1))
    assert enc["tokens"].shape == (3, 1 + 4, 32)
    # the kept tokens are exactly what an unmasked run of the same patches would keep, run on their own:
    full = model.encode_image(images(3), None)
    assert full["tokens"].shape == (3, 1 + 16, 32)
    np.testing.assert_array_equal(np.asarray(full["mask"]), 0)


def test_loss_weights_and_bf16_compute():
    cfg_model = tiny_model(loss_weights=(2.0, 0.5, 0.0))
    total, aux = _loss_fn()(cfg_model, images(4), batch(ufz_graphs()[:4]), jax.random.key(0))
    np.testing.assert_allclose(total, 2 * aux["img_loss"] + 0.5 * aux["contrastive_loss"], rtol=1e-6)
    bf = tiny_model(dtype="bfloat16")
    enc = bf.encode_image(images(2), jax.random.key(1))
    assert enc["tokens"].dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(bf, nnx.Param)))
    total, aux = _loss_fn()(bf, images(4), batch(ufz_graphs()[:4]), jax.random.key(0))
    assert total.dtype == jnp.float32 and np.isfinite(total)


@pytest.mark.slow
def test_zero_node_samples_are_finite_and_excluded(model):
    graphs = ufz_graphs()
    with_empty = batch([graphs[0], _empty_like(graphs[1]), graphs[2], graphs[3]])
    f = _loss_fn(return_outputs=True)
    total, aux = f(model, images(4), with_empty, jax.random.key(0))
    assert np.isfinite(total) and int(aux["samples_without_nodes"]) == 1
    assert not np.asarray(aux["node_valid"])[1].any()
    all_empty = batch([_empty_like(g) for g in graphs[:4]])
    total, aux = f(model, images(4), all_empty, jax.random.key(0))
    assert np.isfinite(total) and float(aux["node_loss"]) == 0 and float(aux["contrastive_loss"]) == 0

    norms = _grad_norms(model, with_empty, jax.random.key(0))
    assert all(np.isfinite(v) for v in norms.values()), [k for k, v in norms.items() if not np.isfinite(v)]
    maps = jax.jit(lambda m, x, g: m.extract(x, g))(model, images(4), with_empty)
    assert all(np.isfinite(np.asarray(m)).all() for m in maps)


def _grad_norms(model, gb, key):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def grads(p):
        return jax.grad(lambda p: nnx.merge(graphdef, p, rest).loss(images(gb.batch_size), gb, key)[0])(p)

    flat = nnx.to_flat_state(grads(params))
    return {".".join(map(str, path)): float(jnp.abs(v[...]).max()) for path, v in flat}


def _same_sign_per_destination(model, graphs, relation):
    """True if, for every destination node, the GAT pre-activation scores of its incoming edges share one sign:
    then att_dst adds the same slope-scaled constant to all of them and the softmax cannot see it."""
    src_t, dst_t = relation.split("_to_")
    conv = model.osm_encoder.convs[relation]
    w, a_s, a_d = (np.asarray(v[...]) for v in (conv.lin.kernel, conv.att_src, conv.att_dst))
    for g in graphs:
        src, dst = g.edge_index[relation]
        pre = (g.features[src_t] @ w @ a_s)[src] + (g.features[dst_t] @ w @ a_d)[dst]
        for i in np.unique(dst):
            signs = np.sign(pre[dst == i])
            if len(signs) > 1 and len(set(signs)) > 1:
                return False
    return True


@pytest.mark.slow
def test_gradients_reach_every_parameter_except_type_attention():
    graphs = ufz_graphs()
    gb = batch(graphs)
    model = tiny_model()
    norms = _grad_norms(model, gb, jax.random.key(0))
    dead = sorted(k for k, v in norms.items() if v == 0)
    # The spec's dead parameter: type_attention (softmax over a size-1 axis, spec §3.4).
    assert {"type_attention.bias", "type_attention.kernel"} <= set(dead)
    # Anything else must be a GAT destination attention vector whose relation, on this data, never mixes
    # score signs at a destination (the same is true in PyTorch); everything else learns.
    others = [k for k in dead if not k.startswith("type_attention.")]
    for k in others:
        assert k.startswith("osm_encoder.convs.") and k.endswith(".att_dst"), k
        assert _same_sign_per_destination(model, graphs, k.split(".")[2]), k
    assert len(others) <= 2, others
    norms = _grad_norms(tiny_model(type_softmax_over_slots=True), gb, jax.random.key(0))
    assert norms["type_attention.kernel"] > 0
    # the bias shifts all slot logits equally, so a softmax over slots gives it no gradient either
    assert norms["type_attention.bias"] < 1e-6 * norms["type_attention.kernel"]


def test_one_compilation_for_varying_graphs(model):
    graphs = ufz_graphs()
    budget = budget_for(graphs)
    f = _loss_fn()
    for i, subset in enumerate(([0, 1, 2, 3], [2, 3, 4, 5], [5, 4, 1, 0])):
        total, _ = f(model, images(4, seed=i), batch([graphs[j] for j in subset], budget), jax.random.key(i))
        assert np.isfinite(total)
    assert f._cache_size() == 1


def test_dropout_only_in_train_mode(model, ufz_batch):
    key = jax.random.key(5)
    _, train_a = _loss_fn(train=True)(model, images(4), ufz_batch, key)
    _, eval_a = _loss_fn(train=False)(model, images(4), ufz_batch, key)
    _, eval_b = _loss_fn(train=False)(model, images(4), ufz_batch, key)
    assert float(eval_a["node_loss"]) == float(eval_b["node_loss"])
    assert float(train_a["node_loss"]) != float(eval_a["node_loss"])
    assert float(train_a["img_loss"]) == float(eval_a["img_loss"])  # dropout lives only in the fusion block


def test_mask_ratio_zero_runs_every_token():
    m = tiny_model(img_mask_ratio=0.0)
    total, aux = _loss_fn(return_outputs=True)(m, images(2), batch(ufz_graphs()[:2]), jax.random.key(0))
    assert float(aux["img_loss"]) == 0.0 and np.isfinite(total)
    np.testing.assert_array_equal(np.asarray(aux["mask"]), 0)


def test_norm_pix_loss_uses_unbiased_variance():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 5, 12)), rng.normal(size=(2, 5, 12)) * 3 + 1
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 0, 0]], np.float32)
    t = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    ref = (((pred - t) ** 2).mean(-1) * mask).sum() / mask.sum()
    ours = losses.image_reconstruction_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    biased = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
    assert not np.isclose(ref, (((pred - biased) ** 2).mean(-1) * mask).sum() / mask.sum(), rtol=1e-4)


def test_contrastive_groups_use_only_local_negatives():
    rng = np.random.default_rng(0)
    zi, zg = jnp.asarray(rng.normal(size=(6, 8))), jnp.asarray(rng.normal(size=(6, 8)))
    valid = jnp.ones(6, bool)
    whole, _ = losses.contrastive_loss(zi, zg, valid, 0.2, groups=1)
    split, _ = losses.contrastive_loss(zi, zg, valid, 0.2, groups=2)
    halves = [losses.contrastive_loss(zi[s], zg[s], valid[s], 0.2)[0] for s in (slice(0, 3), slice(3, 6))]
    np.testing.assert_allclose(split, np.mean(halves), rtol=1e-6)
    assert not np.isclose(whole, split)

    def reference(a, b, t=0.2):  # the reference's formula, written out
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        logits = a @ b.T / t
        ce = lambda lg: np.mean(np.log(np.exp(lg).sum(1)) - np.diag(lg))  # noqa: E731
        return 0.5 * (ce(logits) + ce(logits.T))

    np.testing.assert_allclose(whole, reference(np.asarray(zi), np.asarray(zg)), rtol=1e-5)
    # an invalid sample is neither anchor nor negative
    masked, _ = losses.contrastive_loss(zi, zg, valid.at[5].set(False), 0.2)
    np.testing.assert_allclose(masked, reference(np.asarray(zi)[:5], np.asarray(zg)[:5]), rtol=1e-5)


def test_extractor_maps_and_attention(model):
    gb = batch(ufz_graphs()[:2])
    extract = jax.jit(lambda m, x, g: m.extract(x, g))
    maps = extract(model, images(2), gb)
    assert [m.shape for m in maps] == [(2, 4, 4, 32)] * 3 + [(2, 4, 4, 32)]
    again = extract(model, images(2), gb)
    np.testing.assert_array_equal(np.asarray(maps[-1]), np.asarray(again[-1]))  # deterministic without a key
    maps, info = jax.jit(lambda m, x, g: m.extract(x, g, return_attention=True))(model, images(2), gb)
    k = min(50, sum(gb.nodes[t].shape[1] for t in NODE_TYPES))
    assert info["attention"].shape == (2, k, 16)
    rows = np.asarray(info["attention"]).sum(-1)
    np.testing.assert_allclose(rows, 1.0, rtol=1e-5)
    # more padding changes nothing for the hybrid map
    wide = extract(model, images(2), batch(ufz_graphs()[:2], budget_for(ufz_graphs(), extra=9)))
    np.testing.assert_allclose(np.asarray(wide[-1]), np.asarray(maps[-1]), rtol=1e-5, atol=1e-5)
    # the intermediate maps are the raw block outputs (no norm), cls dropped
    x, _ = model._embed_patches(images(2))
    x = model.img_encoder.blocks[0](model._with_cls(x))
    np.testing.assert_allclose(np.asarray(maps[0]), np.asarray(x[:, 1:]).reshape(2, 4, 4, 32), rtol=1e-5, atol=1e-6)
    assert GeoLinkConfig().default_extract_layers() == (7, 11, 15, 23)
    assert GeoLinkConfig(vit=VIT_PRESETS["B"]).default_extract_layers() == (3, 5, 7, 11)
    assert tiny_config().default_extract_layers() == (0, 0, 0, 1)


def test_parameter_names_document_every_module(model):
    top = {path[0] for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    documented = PARAMETER_NAMES
    missing = [name for name in top if name not in documented]
    assert not missing, missing
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert "osm_encoder.convs.line_to_polygon.att_src" in names
    assert "img_encoder.blocks.0.attn.in_proj.kernel" in names
    assert "osm_read_out.point.lstm.bias_hh" in names
    assert "osm_cross_modal_encoder.0.cross_attn_image_to_token.out_proj.kernel" in names


def test_vit_l_parameter_count_matches_the_reference():
    _, counts = param_count.report(GeoLinkConfig())
    d, depth, patch = 1024, 24, 16
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert counts["encoder"] == (patch * patch * 3 * d + d) + depth * block
    assert round(counts["timm"] / 1e6, 1) == 303.3  # timm vit_large_patch16_224, num_classes=0
    assert round(counts["specific"] / 1e6, 2) == 9.94  # spec §3.1
    assert round(counts["tables"] / 1e6, 2) == 0.35
    assert counts["by_module"]["type_attention"] == 129


def test_geolink_config_from_dict():
    cfg = GeoLinkConfig.from_dict({"vit": "B", "image_size": 128, "loss_weights": [1, 2, 3], "dtype": "bfloat16"})
    assert cfg.vit.width == 768 and cfg.vit.image_size == 128 and cfg.loss_weights == (1, 2, 3)
    m = nnx.eval_shape(lambda: GeoLink(cfg, rngs=nnx.Rngs(0)))
    assert m.img_encoder.patch_embed.proj["kernel"].shape == (16, 16, 3, 768)


def test_every_parameter_carries_logical_axes(model):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    for path, var in flat:
        axes = var.get_metadata().get("logical_axes")
        assert axes is not None and len(axes) == var[...].ndim, (path, axes)
    names = {a for _, v in flat for a in v.get_metadata()["logical_axes"] if a}
    assert {"embed", "mlp", "heads", "head_dim", "node_in", "node_hidden"} <= names


def test_configurable_input_channels_and_image_size():
    m = tiny_model(vit=dataclasses.replace(tiny_config().vit, in_channels=4, image_size=96))
    x = jax.random.normal(jax.random.key(0), (2, 96, 64, 4))  # non-square, divisible by the patch
    enc = m.encode_image(x, jax.random.key(1))
    assert enc["tokens"].shape == (2, 1 + int(24 * 0.25), 32) and enc["grid"] == (6, 4)
    pred = m.decode_image(enc["tokens"], enc["ids_restore"], enc["grid"])
    assert pred.shape == (2, 24, 16 * 16 * 4)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        m.encode_image(jnp.zeros((1, 90, 64, 4)))


def test_batch_groups_and_global_negatives():
    gb = batch(ufz_graphs()[:4])
    key = jax.random.key(3)
    outs = {}
    for name, kw, glob in (("one", dict(batch_groups=1), False), ("local", dict(batch_groups=2), False),
                           ("global", dict(batch_groups=2), True)):
        m = tiny_model(global_negatives=glob)
        outs[name] = _loss_fn(train=False, **kw)(m, images(4), gb, key)[1]
    # groups change the graph-norm statistics (node loss) and, unless global, the contrastive negatives
    assert float(outs["one"]["node_loss"]) != float(outs["local"]["node_loss"])
    assert float(outs["local"]["node_loss"]) == float(outs["global"]["node_loss"])
    assert float(outs["local"]["contrastive_loss"]) != float(outs["global"]["contrastive_loss"])
    assert float(outs["one"]["img_loss"]) == float(outs["local"]["img_loss"])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_linear_custom_backward_matches_autodiff(dtype):
    """layers.linear's hand-written backward (optimization barrier before the weight gradient) = autodiff's."""
    from geolink_jax.nn.layers import linear

    kx, kw, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 5, 8), dtype)
    w = jax.random.normal(kw, (8, 6), dtype)
    probe = jax.random.normal(kg, (2, 5, 6), jnp.float32)

    def loss(fn, x, w):
        return jnp.sum(fn(x, w).astype(jnp.float32) * probe)

    ours = jax.jit(jax.grad(lambda x, w: loss(linear, x, w), argnums=(0, 1)))(x, w)
    ref = jax.grad(lambda x, w: loss(jnp.matmul, x, w), argnums=(0, 1))(x, w)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)
    np.testing.assert_array_equal(linear(x, w), x @ w)
