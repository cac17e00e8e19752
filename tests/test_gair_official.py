"""GAIR against a local checkout of the official code (github zpl99/GAIR, CC BY-NC: run, never copied), when
GAIR_OFFICIAL_REPO points at one; skipped with the reason otherwise.

- HEAD (the inference package `gair/`): its GAIRModel with random weights, imported through our converter, gives
  the same RS, SV and location embeddings and localized RS embeddings (nili, bilinear, bicubic) as our model with
  the inference package's flags (rs.final_norm=False, nili_convention="head", no teachers).
- The research commit (9c5edce: `model_cl_RS_sc.py`, `croma/`, `nif/`, `util/`, `location_encoder/`): its NILI query
  and its loss (contrastive + queue terms + distillation) on equal features equal ours. Its model cannot be built
  offline (it loads CROMA_base.pt and a Hub ViT), so its methods run on the tensors directly.

Tolerances: 2e-4 absolute on embeddings of O(1) (12-layer float32 encoders), 1e-5 relative on losses.
"""

import dataclasses
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geolink_jax.gair import convert as gair_convert
from geolink_jax.gair import nili
from geolink_jax.gair.model import GAIR, GAIRConfig, _queue_infonce
from geolink_jax.nn import losses

REPO = os.environ.get("GAIR_OFFICIAL_REPO")
pytestmark = pytest.mark.skipif(not REPO, reason="GAIR_OFFICIAL_REPO is not set (a local checkout of zpl99/GAIR)")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def official_path():
    sys.path.insert(0, REPO)
    yield pathlib.Path(REPO)
    sys.path.remove(REPO)


def test_inference_package_embeddings_equal_ours(official_path):
    if not (official_path / "gair" / "model.py").exists():
        pytest.skip(f"{REPO} has no gair/model.py (not a HEAD checkout)")
    from gair.model import GAIRModel

    torch.manual_seed(0)
    ref = GAIRModel().eval()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    cfg = GAIRConfig(teachers=False, nili_convention="head", rs=dataclasses.replace(GAIRConfig().rs, final_norm=False))
    model = GAIR(cfg, rngs=nnx.Rngs(0))
    target = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params, queue, report = gair_convert.params_from_gair(sd, target, "GAIRModel state_dict")
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    np.testing.assert_array_equal(queue["queue"], sd["queue_for_location"].T)

    rng = np.random.default_rng(0)
    rs = rng.normal(size=(2, 10, 96, 96)).astype(np.float32)
    sv = rng.normal(size=(2, 3, 224, 224)).astype(np.float32)
    lonlat = np.array([[-75.62, 37.676], [139.70, 35.69]], np.float32)
    bbox = np.array([[-75.63, 37.68, -75.61, 37.67], [139.69, 35.70, 139.71, 35.68]], np.float32)
    with torch.no_grad():
        want_rs = ref.encode_rs(torch.from_numpy(rs)).numpy()
        want_sv = ref.encode_sv(torch.from_numpy(sv)).numpy()
        want_loc = ref.encode_location(torch.from_numpy(lonlat)).numpy()
        want_q = {m: ref.query_localized_rs(torch.from_numpy(rs), torch.from_numpy(lonlat), torch.from_numpy(bbox),
                                            mode=m)[1].numpy() for m in nili.MODES}
    grid, got_rs = model.rs_tokens(jnp.asarray(rs.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got_rs), want_rs, atol=2e-4)
    np.testing.assert_allclose(np.asarray(model.sv_embed(jnp.asarray(sv.transpose(0, 2, 3, 1)))), want_sv, atol=2e-4)
    np.testing.assert_allclose(np.asarray(model.location_embed(jnp.asarray(lonlat))), want_loc, rtol=2e-3, atol=2e-4)
    rel = nili.relative_coords(jnp.asarray(bbox)[:, None], jnp.asarray(lonlat)[:, None])
    for mode in nili.MODES:
        got = np.asarray(model.query(grid, rel, mode))[:, 0]
        np.testing.assert_allclose(got, want_q[mode], atol=2e-4, err_msg=mode)


class _Self:
    """Stands in for the research model in calls of its unbound methods."""


def test_research_nili_and_loss_equal_ours(official_path, monkeypatch):
    if not (official_path / "croma" / "use_croma.py").exists():
        pytest.skip(f"{REPO} has no croma/use_croma.py (not a checkout of the research commit 9c5edce)")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)  # the research code moves labels to GPU
    import model_cl_RS_sc as research

    cls = research.RSSV_LIIF_style
    rng = np.random.default_rng(1)
    b, d, g = 6, 16, 4
    tokens = rng.normal(size=(b, g * g, d)).astype(np.float32)
    lonlat = rng.uniform([10, 50], [10.01, 50.01], (b, 2)).astype(np.float32)
    bbox = np.tile(np.array([[10.0, 50.01, 10.01, 50.0]], np.float32), (b, 1))
    imnet = torch.nn.Linear(9 * d + 2, d)

    fake = _Self()
    fake.rs_patche_number = g
    fake.imnet = imnet
    fake.rs_encoder = lambda x: (None, torch.from_numpy(tokens))
    with torch.no_grad():
        _, want_q = cls.liif_query_embedding(fake, None, torch.from_numpy(lonlat), torch.from_numpy(bbox))
    rel = nili.relative_coords(jnp.asarray(bbox), jnp.asarray(lonlat))[:, None]
    got_q = nili.nili(jnp.asarray(tokens.reshape(b, g, g, d)), nili.grid_position(rel, "research"),
                      jnp.asarray(imnet.weight.detach().numpy().T), jnp.asarray(imnet.bias.detach().numpy()))
    np.testing.assert_allclose(np.asarray(got_q), want_q.numpy(), atol=1e-5)

    # the loss on equal features: queried RS, SV pooler outputs, locations, queue, teacher features
    queried, sv, loc, neg = (rng.normal(size=s).astype(np.float32) for s in ((b, d), (b, d), (b, d), (32, d)))
    t_sv, t_rs, rs_mean = (rng.normal(size=(b, d)).astype(np.float32) for _ in range(3))
    proj = torch.nn.Linear(d, d)
    fake.optical_proj = proj
    fake.logit_scale = torch.nn.Parameter(torch.ones([]) * np.log(1 / 0.07))
    fake.moco_style_loss = lambda pos, neg_, temperature=0.07: cls.moco_style_loss(fake, pos, neg_, temperature)
    fake.cos = torch.nn.CosineSimilarity(dim=1)
    fake.teacher_alpha = 0.2
    T = torch.from_numpy
    with torch.no_grad():
        want = (cls.contrastive_loss(fake, T(queried), T(sv), T(loc), T(neg))
                + cls.distillation_loss(fake, T(sv), T(rs_mean), T(t_sv), T(t_rs))).item()
    sv_z = jnp.asarray(sv) @ jnp.asarray(proj.weight.detach().numpy().T) + jnp.asarray(proj.bias.detach().numpy())
    valid = jnp.ones(b, bool)
    ce, _ = losses.contrastive_loss(sv_z, jnp.asarray(queried), valid, 0.07)
    n = losses.l2_normalize
    l_sv = _queue_infonce(n(sv_z), n(jnp.asarray(loc)), n(jnp.asarray(neg)), valid, 0.07)
    l_rs = _queue_infonce(n(jnp.asarray(queried)), n(jnp.asarray(loc)), n(jnp.asarray(neg)), valid, 0.07)
    cos = lambda a, c: (n(jnp.asarray(a)) * n(jnp.asarray(c))).sum(-1).mean()  # noqa: E731
    got = ce + 0.5 * (l_sv + l_rs) - 0.2 * (cos(sv, t_sv) + cos(rs_mean, t_rs))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
