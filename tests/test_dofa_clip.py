"""DOFA-CLIP family, first parts: the dynamic patch embedding against torchgeo's DOFAEmbedding (same weights
through our converter; padding 1 as torchgeo, and padding 0 as DOFA-CLIP, whose token counts are the same, so only
the values tell them apart). Tolerance 1e-5 absolute on outputs of O(0.1)."""

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
