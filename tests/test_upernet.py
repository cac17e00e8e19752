"""UperNet head (spec §3.9): PyTorch's adaptive-pool bins, ConvTranspose as einsum, BatchNorm semantics, and the
whole head against a PyTorch head of the reference's structure built from torch.nn layers, fp32, both modes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geolink_jax.convert import upernet as convert_upernet
from geolink_jax.downstream import upernet

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


def test_pool_bins_are_pytorchs():
    # the bins spec §3.9 lists for a 7x7 map
    assert upernet.adaptive_pool_bins(7, 2) == [(0, 4), (3, 7)]
    assert upernet.adaptive_pool_bins(7, 3) == [(0, 3), (2, 5), (4, 7)]
    assert upernet.adaptive_pool_bins(7, 6) == [(0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)]
    x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype(np.float32)
    for o in (1, 2, 3, 6, 9):  # 9 > 5: PyTorch repeats cells; the formula must too
        ours = np.asarray(upernet.adaptive_avg_pool(jnp.asarray(x), o))
        ref = F.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), o).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


class _RefHead(nn.Module):
    """The reference's SegUPerNet head (Feature2Pyramid neck + UPerHead), written from spec §3.9 with torch.nn."""

    def __init__(self, in_ch, ch, k, scales=(1, 2, 3, 6), dropout=0.0):
        super().__init__()
        self.neck = nn.Module()
        c0, c1 = in_ch[0], in_ch[1]
        self.neck.ops = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(c0, c0, 2, 2), nn.BatchNorm2d(c0), nn.GELU(),
                          nn.ConvTranspose2d(c0, c0, 2, 2)),
            nn.Sequential(nn.ConvTranspose2d(c1, c1, 2, 2)), nn.Identity(), nn.MaxPool2d(2, 2)])
        self.psp_modules = nn.ModuleList([nn.Sequential(nn.AdaptiveAvgPool2d(s), nn.Conv2d(in_ch[-1], ch, 1),
                                                        nn.BatchNorm2d(ch), nn.ReLU()) for s in scales])

        def cbr(i, o, kk):
            return nn.Sequential(nn.Conv2d(i, o, kk, padding=kk // 2), nn.BatchNorm2d(o), nn.ReLU())

        self.bottleneck = cbr(in_ch[-1] + len(scales) * ch, ch, 3)
        self.lateral_convs = nn.ModuleList([cbr(c, ch, 1) for c in in_ch[:-1]])
        self.fpn_convs = nn.ModuleList([cbr(ch, ch, 3) for _ in in_ch[:-1]])
        self.fpn_bottleneck = cbr(len(in_ch) * ch, ch, 3)
        self.conv_seg = nn.Conv2d(ch, k, 1)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, maps, hw):
        feats = [op(m) for op, m in zip(self.neck.ops, maps)]
        x = feats[-1]
        psp = [x] + [F.interpolate(m(x), size=x.shape[2:], mode="bilinear", align_corners=False)
                     for m in self.psp_modules]
        lats = [lc(f) for lc, f in zip(self.lateral_convs, feats[:-1])] + [self.bottleneck(torch.cat(psp, 1))]
        for i in range(len(lats) - 1, 0, -1):
            lats[i - 1] = lats[i - 1] + F.interpolate(lats[i], size=lats[i - 1].shape[2:], mode="bilinear",
                                                      align_corners=False)
        outs = [fc(lat) for fc, lat in zip(self.fpn_convs, lats[:-1])] + [lats[-1]]
        outs = [outs[0]] + [F.interpolate(o, size=outs[0].shape[2:], mode="bilinear", align_corners=False)
                            for o in outs[1:]]
        out = self.conv_seg(self.dropout(self.fpn_bottleneck(torch.cat(outs, 1))))
        return F.interpolate(out, size=hw, mode="bilinear", align_corners=False)


def _randomise_bn(module, gen):
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)


def _rel(a, b):
    return float(np.abs(a - b).max() / (np.abs(b).max() + 1e-12))


def test_head_matches_pytorch_in_train_and_eval_mode():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    in_ch, ch, k = (24, 24, 24, 16), 32, 9
    ref = _RefHead(in_ch, ch, k)
    _randomise_bn(ref, gen)
    ours = upernet.UperNet(upernet.UperNetConfig(in_channels=in_ch, channels=ch, num_classes=k, dropout=0.0),
                           rngs=nnx.Rngs(0))
    convert_upernet.load_torch_state_dict(ours, {kk: v.numpy() for kk, v in ref.state_dict().items()},
                                          source="torch head")
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(3, 14, 14, c)).astype(np.float32) for c in in_ch]  # the real 14x14 grid: 7x7 PPM
    tmaps = [torch.from_numpy(m).permute(0, 3, 1, 2) for m in maps]

    ref.eval()
    ours.eval()
    with torch.no_grad():
        want = ref(tmaps, (56, 56)).permute(0, 2, 3, 1).numpy()
    got = np.asarray(ours([jnp.asarray(m) for m in maps], (56, 56)))
    assert got.shape == (3, 56, 56, k)
    assert _rel(got, want) < 1e-4

    ref.train()
    ours.train()
    with torch.no_grad():
        want = ref(tmaps, (56, 56)).permute(0, 2, 3, 1).numpy()  # batch statistics; updates running stats
    got = np.asarray(ours([jnp.asarray(m) for m in maps], (56, 56)))
    assert _rel(got, want) < 1e-4
    # running statistics after one training forward (unbiased running variance, momentum 0.1), the PPM's 1x1
    # level included (n = batch = 3, where biased and unbiased differ by 1.5x)
    exported = convert_upernet.torch_state_dict(ours)
    for key, v in ref.state_dict().items():
        if "running" in key:
            np.testing.assert_allclose(exported[key], v.numpy(), rtol=1e-4, atol=1e-6, err_msg=key)


def test_conv_transpose_einsum_equals_torch():
    torch.manual_seed(0)
    ct = nn.ConvTranspose2d(5, 7, 2, 2)
    ours = upernet.ConvTranspose2x2(5, 7, rngs=nnx.Rngs(0))
    ours.kernel[...] = jnp.asarray(ct.weight.detach().numpy().transpose(2, 3, 0, 1))
    ours.bias[...] = jnp.asarray(ct.bias.detach().numpy())
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 5)).astype(np.float32)
    with torch.no_grad():
        want = ct(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_and_errors():
    cfg = upernet.UperNetConfig(in_channels=(8, 8, 8, 4), channels=8, num_classes=3)
    a = upernet.UperNet(cfg, rngs=nnx.Rngs(0))
    b = upernet.UperNet(cfg, rngs=nnx.Rngs(1))
    sd = convert_upernet.torch_state_dict(a)
    ref_keys = set(_RefHead(cfg.in_channels, cfg.channels, cfg.num_classes).state_dict())
    assert set(sd) == {k for k in ref_keys if not k.endswith("num_batches_tracked")}
    convert_upernet.load_torch_state_dict(b, {f"head.{k}": v for k, v in sd.items()}, prefix="head.")
    assert jax.tree.all(jax.tree.map(np.array_equal, nnx.state(a, nnx.Param), nnx.state(b, nnx.Param)))
    bad = dict(sd)
    bad["conv_seg.weight"] = np.zeros((4, 8, 1, 1), np.float32)
    with pytest.raises(convert_upernet.ConversionError, match="conv_seg.weight"):
        convert_upernet.load_torch_state_dict(b, bad)
    extra = dict(sd, **{"lateral_convs.9.0.weight": np.zeros(1)})
    with pytest.raises(convert_upernet.ConversionError, match="lateral_convs.9"):
        convert_upernet.load_torch_state_dict(b, extra)


@pytest.mark.xdist_group("eight_devices")
def test_batch_statistics_are_global_under_a_sharded_batch(eight_devices):
    """SyncBatchNorm equivalence: with the batch sharded over 4 (simulated) devices, the jitted head's batch
    statistics and outputs are the whole batch's, equal to the same batch on one device (per-shard statistics would
    differ: each device holds 1 sample)."""
    r = eight_devices("scenarios:sharded_batch_norm")
    assert r["devices"] == 4
    assert r["out_diff"] <= 1e-5 + 1e-5 * r["out_scale"]
    assert r["stat_diff"] <= 1e-5
