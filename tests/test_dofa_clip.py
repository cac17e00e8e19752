"""DOFA-CLIP family, first parts: the dynamic patch embedding against torchgeo's DOFAEmbedding (same weights
through our converter; padding 1 as torchgeo, and padding 0 as DOFA-CLIP, whose token counts are the same, so only
the values tell them apart; 1e-5 absolute on outputs of O(0.1)), and the sigmoid loss against open_clip's
SigLipLoss (1e-6 relative) and, blockwise over 8 simulated devices, against the dense loss (values 1e-6 relative,
gradients 1e-5) with its per-device memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geolink_jax.dofa_clip import convert as dofa_convert
from geolink_jax.dofa_clip.patch_embed import DynamicPatchEmbed, PatchEmbedConfig

torch = pytest.importorskip("torch")
dofa = pytest.importorskip("torchgeo.models.dofa")

WAVELENGTHS = {  # µm
    "rgb": [0.665, 0.56, 0.49],
    "sentinel2": [0.443, 0.49, 0.56, 0.665, 0.705, 0.74, 0.783, 0.842, 0.865, 0.945, 1.375, 1.61, 2.19],
    "sar": [5.405e4, 5.405e4],  # C band, VV and VH (µm)
    "random9": list(np.random.default_rng(0).uniform(0.4, 2.5, 9)),
}


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = dofa.DOFAEmbedding(dynamic_embed_dim=128, kernel_size=8, embed_dim=32).eval()
    for p in ref.parameters():  # off the initial values (LayerNorm at identity, biases 0.01 hide swapped roles)
        p.data.add_(0.05 * torch.randn_like(p))
    ours = DynamicPatchEmbed(PatchEmbedConfig(width=32, patch_size=8, padding=1), rngs=nnx.Rngs(0))
    state = nnx.state(ours, nnx.Param)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, dofa_convert.patch_embed_from_torch(
        sd, nnx.to_pure_dict(state))))
    nnx.update(ours, state)
    return ref, ours, sd


@pytest.mark.parametrize("name", sorted(WAVELENGTHS))
def test_dynamic_patch_embed_matches_torchgeo_padding_1_and_0(pair, name, monkeypatch):
    ref, ours, _ = pair
    wl = np.asarray(WAVELENGTHS[name], np.float32)
    x = np.random.default_rng(1).normal(size=(2, len(wl), 32, 40)).astype(np.float32)
    with torch.no_grad():
        want1, _ = ref(torch.from_numpy(x), torch.from_numpy(wl))
    got1 = ours(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(wl))
    assert got1.shape == want1.shape == (2, 4 * 5, 32)
    np.testing.assert_allclose(np.asarray(got1), want1.numpy(), atol=1e-5)
    # DOFA-CLIP's convolution has no padding: torchgeo's kernel applied with padding 0
    conv = torch.nn.functional.conv2d
    monkeypatch.setattr(dofa.F, "conv2d", lambda *a, **k: conv(*a, **dict(k, padding=0)))
    with torch.no_grad():
        want0, _ = ref(torch.from_numpy(x), torch.from_numpy(wl))
    ours0 = DynamicPatchEmbed(PatchEmbedConfig(width=32, patch_size=8, padding=0), rngs=nnx.Rngs(1))
    nnx.update(ours0, nnx.state(ours, nnx.Param))
    got0 = ours0(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(wl))
    np.testing.assert_allclose(np.asarray(got0), want0.numpy(), atol=1e-5)
    assert np.abs(np.asarray(got0) - np.asarray(got1)).max() > 1e-3  # the padding matters to the values


def test_patch_embed_weights_round_trip_strictly(pair):
    ref, ours, sd = pair
    back = dofa_convert.patch_embed_to_torch(nnx.to_pure_dict(nnx.state(ours, nnx.Param)))
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_allclose(back[k], sd[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="unused key 'extra'"):
        dofa_convert.patch_embed_from_torch(dict(sd, extra=np.zeros(1)), nnx.to_pure_dict(nnx.state(ours, nnx.Param)))


def test_sigmoid_loss_equals_open_clip_siglip_loss():
    open_clip = pytest.importorskip("open_clip")
    from geolink_jax.dofa_clip.losses import sigmoid_loss

    rng = np.random.default_rng(0)
    img, txt = (rng.normal(size=(12, 8)).astype(np.float32) for _ in range(2))
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    scale, bias = np.log(10.0), -10.0
    want = open_clip.loss.SigLipLoss()(torch.from_numpy(img), torch.from_numpy(txt),
                                       torch.tensor(scale).exp(), torch.tensor(bias)).item()
    got = float(sigmoid_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(scale), jnp.float32(bias)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_blockwise_sigmoid_loss_equals_dense_on_8_devices_and_scales_with_the_shard():
    import json
    import pathlib
    import subprocess
    import sys

    from conftest import EIGHT_DEVICES_ENV

    root = pathlib.Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "tests" / "sigmoid_loss_worker.py")], env=EIGHT_DEVICES_ENV,
                         cwd=root, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for mesh in ("8x1x1", "2x4x1", "1x1x1"):
        np.testing.assert_allclose(out[mesh]["blockwise"], out[mesh]["dense"], rtol=1e-6)
        assert out[mesh]["grad_diff"] < 1e-5, (mesh, out[mesh])
    t = out["temp_bytes"]
    # dense (even as XLA partitions it): B/8 × B logits rows per device, ~4× when B doubles; blockwise: one
    # (B/8)² block at a time plus the B/8 × D embeddings in flight (measured 2.3× when B doubles, 2.7× less at 2048)
    assert t["dense_2048"] > 3 * t["dense_1024"]
    assert t["blockwise_2048"] / t["blockwise_1024"] < 0.8 * t["dense_2048"] / t["dense_1024"]
    assert t["blockwise_2048"] < t["dense_2048"] / 2


def _load(module, params):
    state = nnx.state(module, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(module, state)


def test_image_tower_matches_open_clip_siglip_b16():
    """Stock SigLIP (RGB patch embedding) at full size, random weights, against open_clip's ViT-B-16-SigLIP visual
    tower (2e-4 absolute), its weights exported back with the same keys."""
    open_clip = pytest.importorskip("open_clip")
    from geolink_jax.dofa_clip.towers import ImageTower, ImageTowerConfig

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).visual.eval()
    for name, p in ref.named_parameters():
        if p.ndim == 1 or "latent" in name:  # LayerNorm affine and biases off their init
            p.data.add_(0.1 * torch.randn_like(p))
    sd = {"visual." + k: v.detach().numpy() for k, v in ref.state_dict().items()}
    ours = ImageTower(ImageTowerConfig(patch_embed="rgb"), rngs=nnx.Rngs(0))
    _load(ours, dofa_convert.image_tower_from_open_clip(sd, nnx.to_pure_dict(nnx.state(ours, nnx.Param))))
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got, taps = jax.jit(ours)(jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)
    assert set(taps) == {11} and taps[11].shape == (2, 196, 768)
    back = dofa_convert.image_tower_to_open_clip(nnx.to_pure_dict(nnx.state(ours, nnx.Param)), "visual.trunk.")
    assert set(back) == {k for k in sd if k.startswith("visual.trunk.")}


def test_dynamic_image_tower_takes_any_band_count():
    from geolink_jax.dofa_clip.towers import ImageTower, ImageTowerConfig

    tower = ImageTower(ImageTowerConfig(width=32, depth=2, heads=4, mlp_dim=64, patch_size=8, image_size=36,
                                        taps=(0, 1)), rngs=nnx.Rngs(0))
    f = jax.jit(tower)
    outs = {}
    for name in ("rgb", "sentinel2", "sar"):
        wl = np.asarray(WAVELENGTHS[name], np.float32)
        x = np.random.default_rng(2).normal(size=(2, 36, 36, len(wl))).astype(np.float32)  # 36 px: 4 × 4 tokens
        pooled, taps = f(jnp.asarray(x), jnp.asarray(wl))
        assert pooled.shape == (2, 32) and taps[1].shape == (2, 16, 32) and np.isfinite(np.asarray(pooled)).all()
        outs[name] = np.asarray(pooled)
    # the same pixels at other wavelengths are other inputs
    x3 = np.random.default_rng(3).normal(size=(1, 36, 36, 3)).astype(np.float32)
    a, _ = f(jnp.asarray(x3), jnp.asarray(WAVELENGTHS["rgb"], jnp.float32))
    b, _ = f(jnp.asarray(x3), jnp.asarray([0.842, 1.61, 2.19], jnp.float32))
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
