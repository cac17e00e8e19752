"""Named pod configs are recipes: their derived values equal the README "Recipes" table and their reference run's
values (or a named deviation); the pieces of the recipes that change behaviour: the learning-rate unit and
accumulation, the optimiser constants, GAIR's initialisation from weight files (CROMA with a fresh patch layer, an
HF ViT teacher), the SV dropout, DOFA-CLIP's logit-scale clamp."""

import dataclasses
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geolink_jax import cli
from geolink_jax import config as config_lib
from geolink_jax.train import optimizer, recipe

ROOT = pathlib.Path(__file__).resolve().parents[1]
POD_CONFIGS = ("geolink_vit_b", "geolink_vit_l", "geolink_vit_h", "mae_vit_b", "gair_vit_b", "dofa_clip_b16",
               "dofa_clip_so400m")


def readme_recipes():
    """The README "Recipes" table: {config: {column: cell}}."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Recipes", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("|")]
    header, body = rows[0], [r for r in rows[2:]]
    return {r[0].strip("`"): dict(zip(header[1:], r[1:])) for r in body}


@pytest.mark.parametrize("name", POD_CONFIGS)
def test_pod_config_derives_the_readme_recipe_and_its_reference(name):
    """Every column of the README row equals the recipe card of the config as loaded (a unit bug in `derive`, a
    changed constant or an undocumented change fails here), and every value of its reference run equals ours or
    has a named deviation."""
    config = config_lib.load([f"--config={name}"])
    ours = recipe.ours(config)
    row = readme_recipes()[name]
    for column, cell in row.items():
        if column in ours:
            assert ours[column] == cell, (name, column)
    assert {"effective batch", "peak lr", "warm-up", "clipping", "optimiser"} <= set(row)
    assert recipe.deviations(config, recipe.card(config)) == {}
    assert config.reference.name and config.reference.source


def test_gair_learning_rate_counts_photos_and_accumulation():
    config = config_lib.load(["--config=gair_vit_b"])
    d = config_lib.derive(config, 10_000)
    assert (d.unit, d.effective_batch) == ("photos", 128 * 6 * 32)
    assert d.lr == pytest.approx(1.44e-4)  # their logged rate
    smaller = config_lib.load(["--config=gair_vit_b", "--config.model.sv_budget=16", "--config.optim.accumulate=1"])
    assert config_lib.derive(smaller, 10_000).lr == pytest.approx(1.5e-6 * 128 * 16 / 256)


def test_schedule_counts_optimizer_updates_under_accumulation():
    """With accumulate k the schedule spans total/k updates (MultiSteps advances it once per update): the rate
    peaks after the warm-up and reaches the end value at the last step, not k times later."""
    import ml_collections

    cfg = ml_collections.ConfigDict(dict(accumulate=4, end_lr_factor=0.0, weight_decay=0.0, b1=0.9, b2=0.95,
                                         eps=1e-8, clip_norm=0.0))
    sched = optimizer.schedule(cfg, total_steps=400, lr=1.0, warmup_steps=40)
    assert float(sched(10)) == pytest.approx(1.0) and float(sched(100)) == pytest.approx(0.0, abs=1e-6)
    tx = optimizer.make_optimizer(cfg, 400, 1.0, 40)
    state = tx.init({"w": jnp.zeros(2)})
    for _ in range(8):  # 8 micro-steps = 2 updates
        _, state = tx.update({"w": jnp.ones(2)}, state, {"w": jnp.zeros(2)})
    assert int(state.gradient_step) == 2


def test_dry_run_prints_the_recipe_card_beside_the_reference(capsys):
    assert cli.main(["pretrain", "--config", "gair_vit_b", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"effective batch\s+24,576 photos\s+24,576 photos", out)
    assert re.search(r"peak lr\s+1.44e-4\s+1.44e-4", out) and "main_pretrain.py" in out
    assert "deviation, sampling:" in out and "WARNING" not in out
    # an override that leaves the recipe without a reason is flagged
    assert cli.main(["pretrain", "--config", "dofa_clip_b16", "--dry-run", "--config.optim.clip_norm=1.0"]) == 0
    assert "WARNING: clipping is global norm 1, the reference's none" in capsys.readouterr().out
    for args, message in ((["--config", "gair_vit_b:bogus"], "the argument is 'photo'"),
                          (["--config", "gair_vit_b", "--config.data.path=/nonexistent"], "no manifest.json there")):
        assert cli.main(["pretrain", *args, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err


# ------------------------------------------------------------------ GAIR
def _tiny_gair(**kw):
    from geolink_jax.gair.encoders import RSEncoderConfig, SVEncoderConfig
    from geolink_jax.gair.location import LocationEncoderConfig
    from geolink_jax.gair.model import GAIRConfig

    return GAIRConfig(rs=RSEncoderConfig(width=32, depth=1, num_heads=4, image_size=16, in_channels=10),
                      sv=SVEncoderConfig(width=32, depth=1, num_heads=4, mlp_dim=64, image_size=32),
                      location=LocationEncoderConfig(hidden=32, out_dim=32), sv_budget=2, queue_size=8, **kw)


def test_gair_starts_from_a_12_band_croma_checkpoint_and_an_hf_vit_teacher(tmp_path):
    """GAIR's research initialisation from files: the RS student from CROMA's release (a dict of encoders, 12 bands)
    with only the patch layer fresh, the RS teacher its copy, the SV teacher an HF ViTModel directory, the SV
    student random. The strict converter still refuses the 12-band patch layer."""
    torch = pytest.importorskip("torch")
    croma = pytest.importorskip("torchgeo.models.croma")
    transformers = pytest.importorskip("transformers")
    from geolink_jax.convert.rules import ConversionError
    from geolink_jax.gair import convert as gair_convert
    from geolink_jax.gair import family as gair_family
    from geolink_jax.gair.model import EncoderInit

    torch.manual_seed(0)
    s2 = croma.ViT(dim=32, depth=1, in_channels=12).state_dict()
    torch.save({"s1_encoder": {"linear_input.weight": torch.zeros(32, 128)}, "s2_encoder": s2}, tmp_path / "c.pt")
    hf = transformers.ViTModel(transformers.ViTConfig(image_size=32, hidden_size=32, num_hidden_layers=1,
                                                      num_attention_heads=4, intermediate_size=64))
    hf.save_pretrained(tmp_path / "in21k")
    cfg = _tiny_gair(student_init=EncoderInit(rs=str(tmp_path / "c.pt")),
                     teacher_init=EncoderInit(rs="student", sv=str(tmp_path / "in21k")))
    weights = gair_family.initial_weights(cfg)
    assert sorted(weights) == ["rs_encoder", "teacher_sv"]
    model = jax.jit(lambda w: nnx.split(gair_family.build(cfg, nnx.Rngs(0), w)))(weights)  # inside jit, as trainer
    p = nnx.to_pure_dict(nnx.state(nnx.merge(*model), nnx.Param))
    fresh = nnx.to_pure_dict(nnx.state(gair_family.build(cfg, nnx.Rngs(0)), nnx.Param))
    np.testing.assert_allclose(p["rs_encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"],
                               s2["transformer.layers.0.1.net.0.weight"].numpy().T)
    np.testing.assert_allclose(p["rs_encoder"]["norm_out"]["scale"], s2["transformer.norm_out.weight"].numpy())
    np.testing.assert_allclose(p["rs_encoder"]["linear_input"]["kernel"], fresh["rs_encoder"]["linear_input"]["kernel"],
                               atol=1e-7)  # fresh (eager and jitted draws differ in the last bit)
    for a, b in zip(jax.tree.leaves(p["teacher_rs"]), jax.tree.leaves(p["rs_encoder"])):
        np.testing.assert_array_equal(a, b)
    hsd = hf.state_dict()
    pooler = [k for k in hsd if k.endswith("pooler.dense.weight")][0]
    np.testing.assert_allclose(p["teacher_sv"]["pooler"]["kernel"], hsd[pooler].numpy().T)
    np.testing.assert_allclose(p["sv_encoder"]["pooler"]["kernel"], fresh["sv_encoder"]["pooler"]["kernel"], atol=1e-7)
    with pytest.raises(ConversionError, match="linear_input"):
        gair_convert.rs_from_torchgeo({f"s2_encoder.{k}": v.numpy() for k, v in s2.items()},
                                      jax.tree.map(np.asarray, fresh["rs_encoder"]))
    with pytest.raises(ValueError, match="a student takes ''"):
        gair_family.initial_weights(_tiny_gair(student_init=EncoderInit(sv="student")))


def test_convert_imports_a_12_band_croma_file_only_with_a_fresh_patch_layer(capsys):
    """`convert import --format torchgeo_croma --reinit-patch-layer`: the converter the flag reaches keeps the fresh
    10-band patch layer and reads every other weight; without it the 12-band layer is refused, naming it."""
    croma = pytest.importorskip("torchgeo.models.croma")
    from geolink_jax import family as family_lib
    from geolink_jax.convert.rules import ConversionError

    conv = family_lib.get_family("gair").converters["torchgeo_croma"]
    sd = {f"s2_encoder.{k}": v.numpy() for k, v in croma.ViT(dim=32, depth=1, in_channels=12).state_dict().items()}
    cfg = _tiny_gair()
    with pytest.raises(ConversionError, match="linear_input.weight: shape"):
        conv.from_state_dict(sd, cfg, "c.pt")
    params, _, _ = conv.from_state_dict(sd, cfg, "c.pt", reinit_patch_layer=True)
    fresh = nnx.to_pure_dict(nnx.state(family_lib.get_family("gair").build(cfg, nnx.Rngs(0)), nnx.Param))
    np.testing.assert_array_equal(params["rs_encoder"]["linear_input"]["kernel"],
                                  fresh["rs_encoder"]["linear_input"]["kernel"])
    np.testing.assert_allclose(params["rs_encoder"]["blocks"][0]["mlp"]["fc2"]["bias"],
                               sd["s2_encoder.transformer.layers.0.1.net.3.bias"])
    with pytest.raises(SystemExit):
        cli.main(["convert", "--help"])
    assert "--reinit-patch-layer" in capsys.readouterr().out


def test_sv_dropout_applies_in_training_steps_only():
    """sv.attention_dropout (0.1, as GAIR builds its SV ViT): a training key changes the SV embedding, two keys
    differ, no key is the deterministic embedding; the teachers never get a key."""
    from geolink_jax.gair.model import GAIR

    cfg = _tiny_gair()
    assert cfg.sv.attention_dropout == 0.1 and cfg.sv.hidden_dropout == 0.0
    model = GAIR(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    plain, again = model.sv_embed(x), model.sv_embed(x)
    a, b = model.sv_embed(x, jax.random.key(1)), model.sv_embed(x, jax.random.key(2))
    np.testing.assert_array_equal(plain, again)
    assert float(jnp.abs(a - plain).max()) > 1e-4 and float(jnp.abs(a - b).max()) > 1e-4
    off = GAIR(dataclasses.replace(cfg, sv=dataclasses.replace(cfg.sv, attention_dropout=0.0)), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(off.sv_embed(x, jax.random.key(1)), plain, atol=1e-5)


def test_bilinear_and_bicubic_queries_use_the_inference_package_mapping():
    """Under the research NILI convention too, the baselines read x as the column and y as the row in [−1, 1]
    (HEAD's interp_query_embedding): at a cell centre bilinear returns that token."""
    from geolink_jax.gair.model import GAIR

    model = GAIR(_tiny_gair(), rngs=nnx.Rngs(0))
    assert model.cfg.nili_convention == "research"
    grid = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 4, 32)), jnp.float32)
    rel = jnp.asarray([[[0.125, 0.625]]])  # x: column 0's centre, y: row 2's centre
    np.testing.assert_allclose(model.query(grid, rel, "bilinear")[0, 0], grid[0, 2, 0], atol=1e-6)


# ------------------------------------------------------------------ DOFA-CLIP
def test_dofa_clip_clamps_the_logit_scale_as_open_clip():
    from geolink_jax.dofa_clip import family as dofa_family
    from geolink_jax.dofa_clip.model import DOFACLIPConfig

    cfg = DOFACLIPConfig()
    assert cfg.logit_scale_max == pytest.approx(np.log(100.0))
    for value, want in ((5.0, np.log(100.0)), (2.0, 2.0), (-1.0, 0.0)):
        out = dofa_family.constrain({"logit_scale": jnp.float32(value), "image": {"w": jnp.ones(2)}}, cfg)
        assert float(out["logit_scale"]) == pytest.approx(want) and out["image"]["w"].shape == (2,)
    off = dataclasses.replace(cfg, logit_scale_max=0.0)
    assert float(dofa_family.constrain({"logit_scale": jnp.float32(5.0)}, off)["logit_scale"]) == 5.0


def test_dofa_clip_default_tokenizer_fits_the_default_text_vocabulary():
    from geolink_jax.dofa_clip.model import DOFACLIPConfig
    from geolink_jax.dofa_clip.tokenizer import make_tokenizer

    cfg = DOFACLIPConfig()
    assert cfg.tokenizer.startswith("sentencepiece:") and cfg.text.vocab_size == 32000
    with pytest.raises(config_lib.ConfigError, match="names no model file"):
        make_tokenizer(cfg.tokenizer, 16)
