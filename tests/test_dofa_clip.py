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
    from geolink_jax.nn.sigmoid_loss import sigmoid_loss

    rng = np.random.default_rng(0)
    img, txt = (rng.normal(size=(12, 8)).astype(np.float32) for _ in range(2))
    img /= np.linalg.norm(img, axis=-1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=-1, keepdims=True)
    scale, bias = np.log(10.0), -10.0
    want = open_clip.loss.SigLipLoss()(torch.from_numpy(img), torch.from_numpy(txt),
                                       torch.tensor(scale).exp(), torch.tensor(bias)).item()
    got = float(sigmoid_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(scale), jnp.float32(bias)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.xdist_group("eight_devices")
def test_blockwise_sigmoid_loss_equals_dense_on_8_devices_and_scales_with_the_shard(eight_devices):
    out = eight_devices("scenarios:sigmoid_loss")
    for mesh in ("8x1x1", "2x4x1", "1x1x1"):
        # a float32 sum over 32 × 32 logits in another order (by blocks): within a few ulp times √1024
        np.testing.assert_allclose(out[mesh]["blockwise"], out[mesh]["dense"], rtol=5e-6)
        assert out[mesh]["grad_diff"] < 1e-5, (mesh, out[mesh])
    t = out["temp_bytes"]
    # weak scaling, 256 pairs per device on 2, 4, 8 devices: the dense loss's per-device temporaries grow with the
    # global batch (B/n × B logits: 4× from 2 to 8 devices), the blockwise loss's stay flat (one (B/n)² block and
    # B/n × D embeddings in flight; the backward keeps nothing per ring step)
    assert t["dense_8"] > 3 * t["dense_2"]
    assert max(t[f"blockwise_{n}"] for n in (2, 4, 8)) < 1.3 * min(t[f"blockwise_{n}"] for n in (2, 4, 8))
    assert t["blockwise_8"] < t["dense_8"] / 4


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


# ------------------------------------------------------------------ text tower, whole model, tokenizers
def _perturb(module, scale=0.1):
    """Biases, LayerNorm affines, latents and embeddings off their init (zeros/ones hide swapped roles)."""
    for name, p in module.named_parameters():
        if p.ndim == 1 or "latent" in name or "embedding" in name:
            p.data.add_(scale * torch.randn_like(p))


@pytest.mark.slow
def test_text_tower_and_logits_match_open_clip_siglip_b16():
    """open_clip ViT-B-16-SigLIP at full size (random weights) through our converter: text embeddings 2e-4, the
    σ-logits of 2 images × 3 texts 1e-3 absolute (scale 10, bias −10 amplify float noise), the export has exactly
    the checkpoint's keys."""
    open_clip = pytest.importorskip("open_clip")
    import dataclasses

    from geolink_jax import family as family_lib
    from geolink_jax.dofa_clip.model import DOFACLIPConfig
    from geolink_jax.dofa_clip.towers import ImageTowerConfig

    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None).eval()
    _perturb(ref)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    cfg = dataclasses.replace(DOFACLIPConfig(), image=ImageTowerConfig(patch_embed="rgb", taps=(-1,)),
                              lock_text=False)
    fam = family_lib.get_family("dofa_clip")
    params, cfg2, _ = fam.converters["dofa_clip"].from_state_dict(sd, cfg, "open_clip ViT-B-16-SigLIP")
    model = fam.build(cfg, nnx.Rngs(0))
    _load(model, params)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 224, 224)).astype(np.float32)
    tokens = rng.integers(1, 32000, size=(3, 64)).astype(np.int64)
    with torch.no_grad():
        img_ref, txt_ref, scale, bias = ref(torch.from_numpy(x), torch.from_numpy(tokens))
        want = (scale * img_ref @ txt_ref.T + bias).numpy()
    img, _ = jax.jit(lambda m, a: m.encode_image(a, None))(model, jnp.asarray(x.transpose(0, 2, 3, 1)))
    txt = jax.jit(lambda m, t: m.encode_text(t))(model, jnp.asarray(tokens, jnp.int32))
    np.testing.assert_allclose(np.asarray(txt), txt_ref.numpy(), atol=2e-4)
    np.testing.assert_allclose(np.asarray(model.logits(img, txt)), want, atol=1e-3)
    back = fam.converters["dofa_clip"].to_state_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)), cfg)
    assert set(back) == set(sd)
    # the model config is read from the tensors alone
    inferred = fam.converters["dofa_clip"].from_state_dict(sd, None, "open_clip")[1]
    assert (inferred.image, inferred.text) == (cfg.image, dataclasses.replace(cfg.text))


def test_so400m_towers_match_open_clip_config_at_reduced_depth():
    """Our So400m/14 @384 settings equal open_clip's ViT-SO400M-14-SigLIP-384 config (and timm's trunk); the towers
    built with them at depth 2 (timm VisionTransformer with the trunk's arguments; open_clip's TextTransformer from
    the config's text_cfg) give the same outputs (2e-4): width 1152, 16 heads, MLP 4304, patch 14 on 384 px (27 × 27
    tokens, 6 px unused)."""
    open_clip = pytest.importorskip("open_clip")
    timm = pytest.importorskip("timm")
    import dataclasses
    import json
    import pathlib

    from geolink_jax.dofa_clip.text import SO400M_TEXT, TextTower
    from geolink_jax.dofa_clip.towers import SO400M_384, ImageTower

    spec = json.loads((pathlib.Path(open_clip.__file__).parent / "model_configs" /
                       "ViT-SO400M-14-SigLIP-384.json").read_text())
    tc = spec["text_cfg"]
    assert (SO400M_TEXT.width, SO400M_TEXT.heads, SO400M_TEXT.depth, SO400M_TEXT.context_length,
            SO400M_TEXT.vocab_size, SO400M_TEXT.embed_dim) == (tc["width"], tc["heads"], tc["layers"],
                                                                tc["context_length"], tc["vocab_size"],
                                                                spec["embed_dim"])
    assert SO400M_TEXT.mlp_dim == int(tc["width"] * tc["mlp_ratio"]) and SO400M_384.image_size == 384
    kwargs = dict(img_size=384, patch_size=14, embed_dim=1152, num_heads=16, mlp_ratio=3.7362, class_token=False,
                  global_pool="map", num_classes=0)
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(depth=2, **kwargs).eval()
    assert vit.blocks[0].mlp.fc1.out_features == SO400M_384.mlp_dim
    _perturb(vit)
    ours = ImageTower(dataclasses.replace(SO400M_384, depth=2, patch_embed="rgb", taps=()), rngs=nnx.Rngs(0))
    _load(ours, dofa_convert.image_tower_from_open_clip(
        {"visual.trunk." + k: v.detach().numpy() for k, v in vit.state_dict().items()},
        nnx.to_pure_dict(nnx.state(ours, nnx.Param))))
    x = np.random.default_rng(0).normal(size=(1, 3, 384, 384)).astype(np.float32)
    with torch.no_grad():
        want = vit(torch.from_numpy(x)).numpy()
    got, _ = jax.jit(ours)(jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)

    text_ref = open_clip.model._build_text_tower(spec["embed_dim"], open_clip.model.CLIPTextCfg(
        **{k: v for k, v in dict(tc, layers=2).items() if k not in ("hf_tokenizer_name", "tokenizer_kwargs")})).eval()
    _perturb(text_ref)
    text = TextTower(dataclasses.replace(SO400M_TEXT, depth=2), rngs=nnx.Rngs(0))
    _load(text, dofa_convert.params_from_named(
        {k: v.detach().numpy() for k, v in text_ref.state_dict().items()},
        nnx.to_pure_dict(nnx.state(text, nnx.Param)), dofa_convert.text_tower_name)[0])
    tokens = np.random.default_rng(1).integers(1, 32000, size=(2, 64))
    with torch.no_grad():
        want = text_ref(torch.from_numpy(tokens)).numpy()
    np.testing.assert_allclose(np.asarray(jax.jit(text)(jnp.asarray(tokens, jnp.int32))), want, atol=2e-4)


CAPTIONS = ["A satellite image of a residential area with buildings, roads and trees.",
            "Hello WORLD!!  it's 2024 &amp; 3.5km", "école café naïve 東京 tower", "harbour " * 80, ""]


def test_clip_bpe_tokenizer_matches_open_clip():
    """The bundled BPE vocabulary run by `tokenizers` gives open_clip's SimpleTokenizer ids exactly, truncation
    included (<end_of_text> kept last)."""
    open_clip = pytest.importorskip("open_clip")
    from geolink_jax.dofa_clip.tokenizer import ClipBPETokenizer

    for length in (64, 77):
        np.testing.assert_array_equal(ClipBPETokenizer(context_length=length)(CAPTIONS),
                                      open_clip.tokenize(CAPTIONS, context_length=length).numpy())
    tok = ClipBPETokenizer(context_length=64)
    ids = tok(CAPTIONS[:1])[0]
    body = [int(i) for i in ids if 0 < i < tok.sot]
    assert tok.decode(ids) == open_clip.tokenizer._tokenizer.decode(body).strip()


def test_sentencepiece_tokenizer_matches_open_clip_hf_siglip(tmp_path):
    """A SentencePiece model (trained here on captions) read by our tokenizer and by open_clip's HFTokenizer over
    transformers' SiglipTokenizer (canonicalize cleaning, </s> last, padded with </s>): the same ids."""
    spm = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    from open_clip.tokenizer import HFTokenizer

    from geolink_jax.dofa_clip.tokenizer import SentencePieceTokenizer

    texts = ["a satellite image of a residential area with buildings", "farmland next to a river",
             "an airport with two runways", "dense forest on a mountain slope", "a harbour with boats"] * 40
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(tmp_path / "m"), vocab_size=80,
                                   hard_vocab_limit=False, minloglevel=2)
    transformers.SiglipTokenizer(vocab_file=str(tmp_path / "m.model")).save_pretrained(tmp_path / "hf")
    ref = HFTokenizer(str(tmp_path / "hf"), context_length=16, clean="canonicalize")
    ours = SentencePieceTokenizer(tmp_path / "m.model", 16)
    probe = ["A Satellite image, of FARMLAND!", "harbour_with boats next to a river and a forest on a mountain "
             "slope again and again", "xyz", "runways"]
    np.testing.assert_array_equal(ours(probe), ref(probe).numpy())


# ------------------------------------------------------------------ MaKA
def _torch_translator(width, grid, t_width):
    """DOFA-CLIP's Translator as their model.py states it (nearest F.interpolate; LayerNorm over [C, h, w];
    (1 + γ)x̂ + β from Linear(mean over bands of Linear(sin-cos(µm)))); 3×3 conv), written here in torch."""
    nn = torch.nn

    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.wave_encoder = nn.Module()
            self.wave_encoder.proj = nn.Linear(128, 128)
            self.norm1 = nn.Module()
            self.norm1.layer_norm = nn.LayerNorm([width, grid, grid])
            self.norm1.modality_prompt_fc = nn.Linear(128, 2 * width)
            self.conv1 = nn.Conv2d(width, t_width, 3, padding=1)

        def forward(self, x, wvs):
            h = int(round(x.shape[1] ** 0.5))
            x = x.reshape(x.shape[0], h, h, -1).permute(0, 3, 1, 2)
            x = torch.nn.functional.interpolate(x, (grid, grid)) if h != grid else x
            omega = 1.0 / 10000 ** (torch.arange(64, dtype=torch.float32) / 64.0)
            out = wvs.reshape(-1)[:, None] * omega[None]
            code = torch.cat([torch.sin(out), torch.cos(out)], 1)
            prompt = self.wave_encoder.proj(code).mean(0, keepdim=True)
            gamma, beta = torch.chunk(self.norm1.modality_prompt_fc(prompt), 2, -1)
            n = self.norm1.layer_norm(x)
            x = n + gamma.view(1, -1, 1, 1) * n + beta.view(1, -1, 1, 1)
            return self.conv1(x).flatten(2).transpose(1, 2)

    return Ref().eval()


@pytest.mark.parametrize("grid_in,grid_t", [(8, 5), (4, 6), (6, 6)])
def test_translator_matches_torch_statement(grid_in, grid_t):
    from geolink_jax.dofa_clip import maka

    torch.manual_seed(0)
    ref = _torch_translator(16, grid_t, 12)
    _perturb(ref)
    ours = maka.Translator(16, maka.TeacherConfig("t", grid_t * grid_t, 12), rngs=nnx.Rngs(0))
    _load(ours, dofa_convert.params_from_named({k: v.detach().numpy() for k, v in ref.state_dict().items()},
                                               nnx.to_pure_dict(nnx.state(ours, nnx.Param)),
                                               dofa_convert.translator_name)[0])
    x = np.random.default_rng(0).normal(size=(2, grid_in * grid_in, 16)).astype(np.float32)
    wl = np.asarray(WAVELENGTHS["sentinel2"], np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x), torch.from_numpy(wl)).numpy()
    got = ours(jnp.asarray(x), jnp.asarray(wl))
    assert got.shape == want.shape == (2, grid_t * grid_t, 12)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    # padding bands (band_valid False) leave the prompt as the real bands give it
    padded = ours(jnp.asarray(x), jnp.asarray(np.r_[wl, 0, 0]), jnp.asarray(np.arange(15) < 13))
    np.testing.assert_allclose(np.asarray(padded), np.asarray(got), atol=1e-6)


def test_maka_loss_matches_torch_losses():
    from geolink_jax.dofa_clip import maka

    rng = np.random.default_rng(0)
    teachers = (maka.TeacherConfig("siglip", 9, 8, weight=2.0, translate=False), maka.TeacherConfig("dino", 4, 6))
    preds = {t.name: rng.normal(size=(3, t.tokens, t.width)).astype(np.float32) * 1.5 for t in teachers}
    targets = {t.name: rng.normal(size=(3, t.tokens, t.width)).astype(np.float32) for t in teachers}
    nn, F = torch.nn, torch.nn.functional
    want = 0.0
    for t in teachers:
        p, q = torch.from_numpy(preds[t.name]), torch.from_numpy(targets[t.name])
        cos = nn.CosineEmbeddingLoss()(F.normalize(p.flatten(1), dim=1), F.normalize(q.flatten(1), dim=1),
                                       torch.ones(3))
        want += 1.0 * t.weight * (nn.MSELoss()(p, q) + nn.SmoothL1Loss()(p, q) + cos).item()
    got, parts = maka.maka_loss({k: jnp.asarray(v) for k, v in preds.items()},
                                {k: jnp.asarray(v) for k, v in targets.items()}, teachers, 1.0)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    assert set(parts) == {"siglip", "dino"}


def test_teacher_channel_sampling_rules():
    from geolink_jax.dofa_clip import maka

    assert maka.teacher_bands([5.4e4, 5.4e4]) == [0, 1, 1]
    assert maka.teacher_bands(np.linspace(0.4, 2.5, 202)) == [47, 29, 8]
    assert maka.teacher_bands(np.linspace(0.4, 2.5, 9)) == [0, 1, 2]
    assert maka.teacher_bands(WAVELENGTHS["rgb"]) == [0, 1, 2]
    s2 = WAVELENGTHS["sentinel2"]  # B04, B03, B02 are bands 3, 2, 1 of the L1C stack
    assert maka.teacher_bands(s2) == [3, 2, 1] and maka.teacher_bands(s2, "first3") == [0, 1, 2]


# ------------------------------------------------------------------ properties of the model
def _tiny_cfg(**kw):
    import dataclasses

    from geolink_jax.dofa_clip import maka
    from geolink_jax.dofa_clip.model import DOFACLIPConfig
    from geolink_jax.dofa_clip.text import TextTowerConfig
    from geolink_jax.dofa_clip.towers import ImageTowerConfig

    base = DOFACLIPConfig(
        image=ImageTowerConfig(width=32, depth=2, heads=4, mlp_dim=64, patch_size=8, image_size=32, taps=(-1,)),
        text=TextTowerConfig(vocab_size=100, context_length=8, width=32, depth=1, heads=4, mlp_dim=64, embed_dim=32),
        teachers=(maka.TeacherConfig("same", 16, 32, 2.0, translate=False), maka.TeacherConfig("small", 9, 24)),
        band_buckets=(4, 8, 16))
    return dataclasses.replace(base, **kw)


def _tiny_batch(cfg, channels, b=4, seed=0):
    rng = np.random.default_rng(seed)
    cb = cfg.bucket(channels)
    wl = np.zeros(cb, np.float32)
    wl[:channels] = np.sort(rng.uniform(0.4, 2.4, channels))
    img = np.zeros((b, 32, 32, cb), np.float32)
    img[..., :channels] = rng.normal(size=(b, 32, 32, channels))
    batch = dict(image=img, wavelengths=np.tile(wl, (b, 1)), band_valid=np.tile(np.arange(cb) < channels, (b, 1)),
                 tokens=rng.integers(0, 100, (b, 8)).astype(np.int32), teacher_bands=np.tile([0, 1, 2], (b, 1)))
    for t in cfg.teachers:
        if not t.online:
            batch[f"teacher_{t.name}"] = rng.normal(size=(b, t.tokens, t.width)).astype(np.float16)
    return {k: jnp.asarray(v) for k, v in batch.items()}


def test_band_permutation_leaves_the_embedding_unchanged():
    """Permuting bands together with their wavelengths gives the same image embedding (the kernel generator is a
    set function of the wavelength tokens); permuting the bands alone does not."""
    from geolink_jax.dofa_clip.towers import ImageTower

    tower = ImageTower(_tiny_cfg().image, rngs=nnx.Rngs(0))
    f = jax.jit(lambda m, x, w: m(x, w)[0])
    wl = np.asarray(WAVELENGTHS["sentinel2"], np.float32)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 13)).astype(np.float32)
    perm = np.random.default_rng(1).permutation(13)
    a = np.asarray(f(tower, jnp.asarray(x), jnp.asarray(wl)))
    b = np.asarray(f(tower, jnp.asarray(x[..., perm]), jnp.asarray(wl[perm])))
    c = np.asarray(f(tower, jnp.asarray(x[..., perm]), jnp.asarray(wl)))
    np.testing.assert_allclose(b, a, atol=1e-5)
    assert np.abs(c - a).max() > 1e-3


def test_band_padding_to_a_bucket_is_exact():
    """Padding bands (zero pixels, band_valid False) leave the embedding and the patch tokens of the real bands
    as they are: a bucket costs compute, never accuracy."""
    from geolink_jax.dofa_clip.towers import ImageTower

    tower = ImageTower(_tiny_cfg().image, rngs=nnx.Rngs(0))
    f = jax.jit(lambda m, x, w, v: m(x, w, v))
    wl = np.asarray(WAVELENGTHS["sentinel2"], np.float32)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 13)).astype(np.float32)
    a, ta = f(tower, jnp.asarray(x), jnp.asarray(wl), None)
    xp = np.concatenate([x, np.zeros((2, 32, 32, 3), np.float32)], -1)
    b, tb = f(tower, jnp.asarray(xp), jnp.asarray(np.r_[wl, 0, 0, 0]), jnp.asarray(np.arange(16) < 13))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    np.testing.assert_allclose(np.asarray(tb[-1]), np.asarray(ta[-1]), atol=1e-5)


def test_locked_text_tower_gets_no_update_and_no_optimizer_state():
    """lock_text: the text tower's parameters are frozen (not in the trained params, so no optimizer state) and a
    train step leaves them bit-identical while the image tower moves; unlocked, the text tower trains too."""
    import optax

    from geolink_jax import family as family_lib

    fam = family_lib.get_family("dofa_clip")
    for lock in (True, False):
        cfg = _tiny_cfg(lock_text=lock)
        model = fam.build(cfg, nnx.Rngs(0))
        graphdef, params, frozen, state = family_lib.split(model, fam)
        p, fz = family_lib.pure(params), family_lib.pure(frozen)
        assert ("text" in fz) == lock and ("text" in p) == (not lock)
        opt = optax.adamw(1e-2)
        opt_state = opt.init(p)
        batch = _tiny_batch(cfg, 3)

        def loss(p):
            m = family_lib.merge(graphdef, (params, frozen, state), (p, fz, family_lib.pure(state)))
            return m.loss(batch)[0]

        grads = jax.jit(jax.grad(loss))(p)
        updates, _ = opt.update(grads, opt_state, p)
        new = optax.apply_updates(p, updates)
        moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), new, p)
        assert max(jax.tree.leaves(moved["image"])) > 0
        if lock:
            n_opt = sum(x.size for x in jax.tree.leaves(opt_state))
            n_params = sum(x.size for x in jax.tree.leaves(p))
            assert n_opt <= 2 * n_params + 10  # adam moments of the trained params only
        else:
            assert max(jax.tree.leaves(moved["text"])) > 0


def test_online_teacher_runs_in_the_step_frozen_and_equals_caching_it():
    """An online JAX teacher gives the same loss as its features cached into the batch, and gets no gradient."""
    import dataclasses

    from geolink_jax import family as family_lib
    from geolink_jax.dofa_clip import maka
    from geolink_jax.dofa_clip.towers import ImageTowerConfig

    tower = ImageTowerConfig(width=24, depth=1, heads=2, mlp_dim=48, patch_size=8, image_size=24, patch_embed="rgb",
                             taps=(-1,))
    online = maka.TeacherConfig("sig", 9, 24, tower=tower, online=True)
    fam = family_lib.get_family("dofa_clip")
    cfg = _tiny_cfg(teachers=(online,))
    model = fam.build(cfg, nnx.Rngs(0))
    batch = _tiny_batch(cfg, 3)
    loss_online, m1 = jax.jit(lambda m, b: m.loss(b))(model, batch)
    x = jnp.take(batch["image"], batch["teacher_bands"][0], axis=-1)
    x = jax.image.resize(x, (4, 24, 24, 3), "bilinear", antialias=False)
    feats = model.teachers["sig"](x)[1][-1]
    cached_cfg = dataclasses.replace(cfg, teachers=(dataclasses.replace(online, tower=None, online=False),))
    cached = fam.build(cached_cfg, nnx.Rngs(0))
    nnx.update(cached, nnx.state(model, nnx.Not(nnx.PathContains("teachers"))))
    loss_cached, _ = jax.jit(lambda m, b: m.loss(b))(cached, dict(batch, teacher_sig=feats))
    np.testing.assert_allclose(float(loss_online), float(loss_cached), rtol=1e-5)
    _, params, frozen, _ = family_lib.split(model, fam)
    assert "teachers" in family_lib.pure(frozen) and "teachers" not in family_lib.pure(params)


@pytest.mark.parametrize("kind", ["dinov2_reg", "augreg"])
def test_teacher_towers_match_timm_and_load_from_its_checkpoint_at_another_size(kind, tmp_path):
    """The JAX towers of MaKA's DINOv2-with-registers and ViT AugReg teachers equal timm's VisionTransformer (tiny
    width, their options: class token, 4 registers, positions on the patches only, LayerScale), read from a timm
    checkpoint for a smaller image (positions resampled as timm's checkpoint filter does), and an online teacher
    whose `weights` name that file gets them inside the jitted initialisation."""
    import dataclasses

    import torch
    from timm.models import vision_transformer as tvt

    from geolink_jax.convert.files import save_weights
    from geolink_jax.dofa_clip import family as dofa_family
    from geolink_jax.dofa_clip import maka
    from geolink_jax.dofa_clip.convert import image_tower_params
    from geolink_jax.dofa_clip.towers import ImageTower

    base = {"dinov2_reg": maka.DINOV2_L_REG, "augreg": maka.VIT_L_AUGREG}[kind]
    timm_kw = (dict(reg_tokens=4, no_embed_class=True, init_values=1e-5, patch_size=14) if kind == "dinov2_reg"
               else dict(patch_size=16))
    p = timm_kw["patch_size"]
    torch.manual_seed(0)
    small = tvt.VisionTransformer(img_size=2 * p, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=0,
                                  global_pool="", **timm_kw).eval()
    for name, w in small.named_parameters():  # LayerScale and tokens far from their init, so that they count
        if "gamma" in name or "token" in name:
            w.data = torch.randn_like(w) * 0.5
    sd = {k: v.numpy() for k, v in small.state_dict().items()}
    save_weights(sd, tmp_path / "teacher.safetensors")
    big = tvt.VisionTransformer(img_size=3 * p, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=0,
                                global_pool="", **timm_kw).eval()
    big.load_state_dict(tvt.checkpoint_filter_fn({k: torch.from_numpy(v) for k, v in sd.items()}, big))
    tower_cfg = dataclasses.replace(base.tower, width=32, depth=2, heads=4, mlp_dim=64, image_size=3 * p)
    tower = ImageTower(tower_cfg, rngs=nnx.Rngs(0))
    state = nnx.state(tower, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, image_tower_params(
        tmp_path / "teacher.safetensors", tower_cfg, nnx.to_pure_dict(state))))
    nnx.update(tower, state)
    x = np.random.default_rng(0).normal(size=(2, 3 * p, 3 * p, 3)).astype(np.float32)
    with torch.no_grad():
        want = big.forward_features(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()[:, big.num_prefix_tokens:]
    np.testing.assert_allclose(np.asarray(tower(jnp.asarray(x))[1][-1]), want, atol=2e-5)

    teacher = dataclasses.replace(base, name="t", tokens=9, width=32, tower=tower_cfg, online=True,
                                  weights=str(tmp_path / "teacher.safetensors"))
    cfg = _tiny_cfg(teachers=(teacher,))
    weights = dofa_family.initial_weights(cfg)
    graph, params = jax.jit(lambda w: nnx.split(dofa_family.build(cfg, nnx.Rngs(0), w)))(weights)
    got = nnx.merge(graph, params).teachers["t"]
    np.testing.assert_allclose(np.asarray(got(jnp.asarray(x))[1][-1]), want, atol=2e-5)
