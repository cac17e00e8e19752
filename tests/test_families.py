"""The family interface is the only contract: a throwaway family defined here trains through the public trainer;
config building, overrides and derived values; the MAE family's timm export; layering and packaging."""

import ast
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import TEST_XLA_FLAGS
from flax import nnx
from jax.sharding import PartitionSpec as P

from geolink_jax import cli
from geolink_jax import config as config_lib
from geolink_jax import family as family_lib
from geolink_jax.train import trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ a throwaway family
class Count(nnx.Variable):  # model state: updated inside the step, checkpointed
    pass


class Queue(nnx.Variable):  # a FIFO of recent values (GAIR keeps one of coordinates)
    pass


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    width: int = 4
    queue: int = 6


class Toy(nnx.Module):
    """A student `w` fits a frozen random teacher on x; the loss counts its calls and queues each batch's mean t."""

    def __init__(self, cfg, rngs):
        self.w = nnx.Param(jnp.zeros((cfg.width,)))
        self.teacher = nnx.Param(jax.random.normal(rngs.params(), (cfg.width,)))  # frozen: see trainable below
        self.calls = Count(jnp.zeros((), jnp.int32))
        self.queue = Queue(jnp.zeros((cfg.queue,)))


def toy_loss(model, batch, key, ctx):
    err = batch["x"] @ model.w[...] - batch["x"] @ model.teacher[...]
    # a loss that communicates across the data axis: per-device sums, psum'd inside shard_map
    total = jax.shard_map(lambda e: jax.lax.psum(jnp.sum(e * e), ctx.batch_axes), mesh=ctx.mesh,
                          in_specs=P(ctx.batch_axes), out_specs=P())(err)
    model.calls[...] = model.calls[...] + 1
    model.queue[...] = jnp.roll(model.queue[...], 1).at[0].set(batch["t"].mean())
    return total / err.shape[0], dict(calls=model.calls[...].astype(jnp.float32))


def toy_dataset(paths, manifest, config, model_cfg, process_index=0, process_count=1):
    def sample(i):  # two inputs of different kinds
        return dict(x=np.random.default_rng(i).standard_normal(model_cfg.width).astype(np.float32),
                    t=np.float32(i))

    return (grain.MapDataset.range(manifest["num_records"]).repeat().map(sample).batch(config.batch_size)
            .to_iter_dataset())


def toy_default_data(config, workdir):
    path = pathlib.Path(workdir) / "toy"
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps({"num_records": 64}))
    return path


TOY = family_lib.Family(
    name="toy", config_cls=ToyConfig, build=Toy, loss=toy_loss, dataset=toy_dataset, default_data=toy_default_data,
    abstract_batch=lambda cfg, b, m=None: dict(x=jax.ShapeDtypeStruct((b, cfg.width), np.float32),
                                               t=jax.ShapeDtypeStruct((b,), np.float32)),
    example_batch=lambda cfg, b, seed=0: dict(x=np.ones((b, cfg.width), np.float32), t=np.zeros(b, np.float32)),
    flops_per_sample=lambda cfg, m=None: 6.0 * cfg.width, configs={},
    trainable=nnx.PathContains("w"))


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(family_lib.FAMILIES, "toy", TOY)
    config = config_lib.base_config("toy")
    config.update(batch_size=4, total_steps=6, log_every=1, checkpoint_every=3, pictures=False, tensorboard=False,
                  async_checkpoints=False)
    config.optim.update(lr=0.1, warmup_steps=0, weight_decay=0.0)
    return config


def _restore_raw(workdir, step):
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(pathlib.Path(workdir) / "checkpoints" / str(step) / "state")


def test_a_family_defined_in_a_test_trains_through_the_public_trainer(toy, tmp_path):
    assert sorted(toy.model.keys()) == ["queue", "width"]  # the model block is the dataclass
    rows = trainer.train(toy, tmp_path, progress=False)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    assert [r["calls"] for r in rows] == list(range(1, 7))  # non-Param state updated inside the step
    saved = _restore_raw(tmp_path, 6)
    teacher0 = Toy(ToyConfig(), nnx.Rngs(toy.seed)).teacher[...]
    np.testing.assert_array_equal(saved["frozen"]["teacher"], teacher0)  # frozen: checkpointed, never updated
    assert "teacher" not in saved["params"]
    opt_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(saved["opt_state"])]
    assert opt_paths and not any("teacher" in p for p in opt_paths)  # no optimizer state for frozen params
    assert not np.allclose(saved["params"]["w"], 0.0)

    # resume: the model state comes back from the checkpoint and keeps counting; the data continue in order
    with toy.unlocked():
        toy.total_steps = 8
    more = trainer.train(toy, tmp_path, progress=False)
    assert [r["step"] for r in more] == [7, 8] and [r["calls"] for r in more] == [7.0, 8.0]
    queue = _restore_raw(tmp_path, 8)["state"]["queue"]
    np.testing.assert_allclose(queue, [4 * k + 1.5 for k in range(7, 1, -1)])  # mean t of batches 8, 7, … 3
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["family"] == "toy" and saved["derived"]["total_steps"] == 8


def test_initial_weights_and_constrain_hooks_run_in_the_trainer(toy, tmp_path, monkeypatch):
    """A family's weight files reach the jitted initialisation (the teacher is what `initial_weights` read), and its
    `constrain` projects the params after every update (an Adam step of lr 0.1 would move w by ~0.1)."""
    teacher = np.arange(4, dtype=np.float32)

    def build(cfg, rngs, weights=None):
        model = Toy(cfg, rngs)
        if weights is not None:
            model.teacher[...] = weights["teacher"]
        return model

    fam = dataclasses.replace(TOY, build=build, initial_weights=lambda cfg: {"teacher": teacher},
                              constrain=lambda params, cfg: dict(params, w=jnp.clip(params["w"], -0.05, 0.05)))
    monkeypatch.setitem(family_lib.FAMILIES, "toy", fam)
    with toy.unlocked():
        toy.total_steps = 2
    trainer.train(toy, tmp_path, progress=False)
    saved = _restore_raw(tmp_path, 2)
    np.testing.assert_array_equal(saved["frozen"]["teacher"], teacher)
    assert np.abs(saved["params"]["w"]).max() == pytest.approx(0.05)


# ------------------------------------------------------------------ configs
def test_every_model_field_is_a_config_field_and_defaults_live_in_the_dataclass():
    from geolink_jax.geolink.model import GeoLinkConfig

    config = config_lib.load(["--config=demo", "--config.model.max_masked_nodes=5",
                              "--config.model.round_type_slots_bf16=False", "--config.model.attention_impl=xla"])
    cfg = family_lib.model_config("geolink", config)
    assert (cfg.max_masked_nodes, cfg.round_type_slots_bf16, cfg.attention_impl) == (5, False, "xla")
    fields = {f.name for f in dataclasses.fields(GeoLinkConfig)}
    assert set(config_lib.base_config("geolink").model.keys()) == fields
    # fields the demo does not set keep the dataclass default
    assert cfg.temperature == GeoLinkConfig().temperature and cfg.set2set_steps == GeoLinkConfig().set2set_steps


def test_derived_values_follow_the_final_config():
    config = config_lib.load(["--config=geolink_vit_l", "--config.batch_size=512"])
    d = config_lib.derive(config)
    assert d.total_steps == -(-100 * 1_270_000 // 512)
    assert d.lr == pytest.approx(1.5e-4 * 512 / 256) and d.warmup_steps == int(0.05 * d.total_steps)
    resolved = trainer.resolve(config, {"feature_dim": 384, "num_records": 10})
    assert resolved.model.osm_in_features == 384  # the data decide; config.json holds it
    assert resolved.derived.total_steps == d.total_steps  # data.num_examples set: the manifest count is not used


@pytest.mark.parametrize("args, message", [
    (["--config=demo", "--config.model.vit.dept=3"], "config.model.vit.dept: no such field; valid: .*vit.depth"),
    (["--config=demo", "--config.family=nonesuch"],
     "unknown model family 'nonesuch'; known families: dofa_clip, gair, geolink, mae"),
    (["--config=mae_demo", "--config.model.osm_hidden=8"], "config.model.osm_hidden: no such field"),
    (["--config=nonesuch"], "no config file or named config 'nonesuch'; named configs: demo, dofa_clip_b16, "
                            "dofa_clip_demo, dofa_clip_so400m, gair_demo, gair_vit_b, geolink_demo, geolink_vit_b"),
])
def test_bad_config_fails_before_any_work_naming_the_field(tmp_path, capsys, args, message):
    workdir = tmp_path / "w"
    assert cli.main(["pretrain", "--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not workdir.exists()  # nothing was written


# ------------------------------------------------------------------ MAE family
def test_mae_weights_export_as_a_timm_vit_and_import_back(tmp_path):
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from geolink_jax.convert import params_store
    from geolink_jax.nn.mae import ImageMAE, MAEConfig
    from geolink_jax.nn.vit import ViTConfig

    cfg = MAEConfig(vit=ViTConfig(32, 2, 4, image_size=64), decoder_width=32, decoder_heads=4)
    model = ImageMAE(cfg, rngs=nnx.Rngs(3))
    # a cls token of unit scale: at init (std 0.02) its LayerNorm would show the eps difference (1e-5 vs timm 1e-6)
    model.cls_token[...] = jax.random.normal(jax.random.key(1), model.cls_token.shape)
    params = jax.tree.map(np.asarray, family_lib.pure(nnx.state(model, nnx.Param)))
    params_store.save_params(tmp_path / "w", params, cfg)
    out = tmp_path / "vit.safetensors"
    assert cli.main(["convert", "export", "--src", str(tmp_path / "w"), "--out", str(out)]) == 0  # mae: timm

    from safetensors.numpy import load_file

    v = cfg.vit
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=v.image_size, patch_size=v.patch_size, embed_dim=v.width, depth=v.depth, num_heads=v.num_heads,
        num_classes=0, global_pool="").eval()
    ref.load_state_dict({k: torch.from_numpy(a) for k, a in load_file(str(out)).items()}, strict=True)
    images = np.random.default_rng(0).normal(size=(2, v.image_size, v.image_size, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = ref.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    ours = np.asarray(model.encode_image(jnp.asarray(images), key=None)["tokens"])
    # img_norm eps 1e-5 vs timm's 1e-6 (as GeoLink's image branch)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)

    assert cli.main(["convert", "import", "--src", str(out), "--out", str(tmp_path / "back")]) == 0
    family, back, back_cfg = params_store.load_params(tmp_path / "back")
    assert family == "mae" and back_cfg == cfg  # the export's recorded config: no --heads needed
    for k in ("img_encoder", "cls_token", "img_norm"):
        jax.tree.map(np.testing.assert_array_equal, back[k], params[k])

    # the family's embedding function through the generic CLI: image embeddings only (no fusion map)
    from geolink_jax import samples

    assert cli.main(["embed", "--params", str(tmp_path / "back"), "--tiles", str(samples.UFZ_DIR), "--out",
                     str(tmp_path / "e.parquet"), "--maps", str(tmp_path / "m.npz")]) == 0
    import geopandas as gpd

    gdf = gpd.read_parquet(tmp_path / "e.parquet")
    assert len(gdf) == 6 and "fusion_mean" not in gdf.columns and len(gdf["cls"][0]) == v.width
    assert sorted(np.load(tmp_path / "m.npz").files) == ["patch", "tile_id"]


# ------------------------------------------------------------------ layering and packaging
def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_library_code_never_imports_job_code_and_samples_imports_nothing():
    for path in (ROOT / "geolink_jax").rglob("*.py"):
        bad = [m for m in _imports(path) if m.split(".")[0] in ("data_pipelines", "benchmarks", "configs")]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"
    # the bottom of the osm_graph → tag_encoders → tags → samples chain imports no project module (no circle)
    assert not [m for m in _imports(ROOT / "geolink_jax" / "samples.py") if m.startswith("geolink_jax")]


@pytest.mark.slow
def test_wheel_installs_one_package_and_runs_from_elsewhere(tmp_path):
    """Build the wheel, install it into a fresh venv (dependencies seen from this environment, the project itself
    only from the wheel) and run a named config and a benchmark from a directory outside the checkout."""
    dist, src = tmp_path / "dist", tmp_path / "src"  # built from a copy: the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "out", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("geolink_jax-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"geolink_jax"}, tops

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = [p for p in sys.path if p.endswith("site-packages")]
    pathlib.Path(site, "deps.pth").write_text("\n".join(ours) + "\n")  # appended after the venv's own site
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env["XLA_FLAGS"] = TEST_XLA_FLAGS
    run = lambda *a: subprocess.run([str(venv / "bin" / "geolink-jax"), *a], cwd=elsewhere, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=900)
    where = subprocess.run([str(py), "-c", "import geolink_jax, importlib.util as u; print(geolink_jax.__file__); "
                            "print([m for m in ('configs', 'benchmarks', 'data_pipelines') if u.find_spec(m)])"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert where[0].startswith(site) and where[1] == "[]", where

    out = run("pretrain", "--config", "demo", "--workdir", "w", "--no-progress", "--config.total_steps=2",
              "--config.data.encoder=hash:64", "--config.log_every=1", "--config.pictures=False")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 2: loss" in out.stdout and (elsewhere / "w" / "checkpoints" / "2").is_dir()
    out = run("preprocess", "--runner", "beam", "--encoder", "hash:8", "--out", "shards", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((elsewhere / "shards" / "manifest.json").read_text())["num_records"] == 5
    out = run("bench", "--suite", "quick", "--only", "compile", "--no-progress", "--out", "bench",
              "--config.compile.config=mae_demo", "--config.compile.batches=2", "--config.compile.naive=False")
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    (row,) = [json.loads(line) for line in (elsewhere / "bench" / "rows.jsonl").read_text().splitlines()]
    assert row["suite"] == "compile" and row["status"] == "ok" and row["config"]["config"] == "mae_demo"
    assert row["metrics"]["padded_backend_compiles"] == 1


def test_debug_shows_the_traceback_of_a_one_line_error(tmp_path):
    with pytest.raises(config_lib.ConfigError, match="no config file or named config"):
        cli.main(["--debug", "pretrain", "--config", "nonesuch", "--workdir", str(tmp_path / "w")])
