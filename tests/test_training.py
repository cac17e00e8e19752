"""Sharded training on 8 simulated CPU devices, checkpoint resharding, and kill-and-resume through the CLI.

The mesh scenarios run in the 8-device server (the device count is fixed when jax starts); the CLI runs are real
processes, since they are about processes."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import BASELINE_STEPS, SUBPROCESS_ENV, pretrain_cmd

from geolink_jax.train import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.xdist_group("eight_devices")
def test_same_losses_on_dp_fsdp_and_tensor_meshes_then_reshard_a_checkpoint(data_dir, tmp_path, eight_devices):
    # two meshes, each compiled once: the save and restore scenarios load the same step programs from the
    # persistent compilation cache. With on-device augmentation: the step's image and graph crop run on
    # batch-sharded inputs (the host path's arrays only enter the step: it runs on 2 × 4 devices in
    # tests/test_multiprocess.py).
    device_aug = "data.augment_on_device=True"
    runs = eight_devices("mesh_worker:losses", data_dir, "8,1,1;2,2,2", 3, "demo", device_aug)
    ref = runs["8,1,1"]["losses"]
    for mesh, run in runs.items():
        np.testing.assert_allclose(run["losses"], ref, rtol=5e-5, err_msg=mesh)  # fp32 reduction order differs
    assert not any("fsdp" in s or "tensor" in s for s in runs["8,1,1"]["specs"])  # pure data parallel
    assert any("tensor" in s for s in runs["2,2,2"]["specs"]) and any("fsdp" in s for s in runs["2,2,2"]["specs"])

    ckpt = str(tmp_path / "ckpt")
    eight_devices("mesh_worker:save", data_dir, "8,1,1", ckpt, "demo", device_aug)
    # pure data parallel → FSDP × tensor
    restored = eight_devices("mesh_worker:restore", data_dir, "2,2,2", ckpt, "demo", device_aug)
    assert restored["max_abs_diff"] == 0.0 and restored["step"] == 2
    assert any("fsdp" in s for s in restored["specs"])
    # the restored state and data iterator continue exactly where the uninterrupted run went
    np.testing.assert_allclose(restored["next_loss"], ref[2], rtol=1e-5)


@pytest.mark.xdist_group("eight_devices")
def test_mae_family_same_loss_on_one_device_and_8_device_meshes(data_dir, eight_devices):
    # with on-device augmentation (images only: the drawn box is the crop); the host path runs in the resume test
    runs = eight_devices("mesh_worker:losses", data_dir, "1,1,1;2,4,1", 3, "mae_demo", "data.augment_on_device=True")
    ref = runs["1,1,1"]["losses"]
    assert len(ref) == 3 and all(np.isfinite(ref))
    for mesh, run in runs.items():
        np.testing.assert_allclose(run["losses"], ref, rtol=5e-5, err_msg=mesh)
    assert any("fsdp" in s for s in runs["2,4,1"]["specs"])


def _pretrain(workdir, data_dir, steps, config):
    return subprocess.Popen(pretrain_cmd(workdir, data_dir, steps, config=config), env=SUBPROCESS_ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _losses(workdir):
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # the log carries achieved model FLOP/s (MFU only where the device's peak is known)
        assert r["tflops_per_s_per_device"] > 0 and ("mfu" in r) == ("cpu" not in jax.devices()[0].device_kind)
    return {r["step"]: r["loss"] for r in rows}


@pytest.mark.parametrize("config, pictures", [
    (str(ROOT / "configs" / "demo.py"), ("reconstructions.png", "osm_graph.png")),  # GeoLink, a config file
    ("mae_demo", ("reconstructions.png",)),  # the MAE family, a named config
])
@pytest.mark.slow
@pytest.mark.xdist_group("baseline")
def test_sigterm_then_resume_continues_exactly(data_dir, tmp_path, config, pictures, request):
    """bf16 compute: the resumed run must still match bit for bit, and the checkpoint holds float32 parameters.
    GeoLink's uninterrupted run is the shared baseline run (the same command); MAE's runs beside the cut one."""
    steps = BASELINE_STEPS
    if config == str(ROOT / "configs" / "demo.py"):
        straight, straight_dir = None, request.getfixturevalue("baseline_run")
    else:
        straight, straight_dir = _pretrain(tmp_path / "straight", data_dir, steps, config), tmp_path / "straight"
    interrupted = _pretrain(tmp_path / "cut", data_dir, steps, config)
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and interrupted.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            interrupted.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, err = interrupted.communicate(timeout=300)
    assert interrupted.returncode == 143, err[-3000:]
    cut_at = max(_losses(tmp_path / "cut"))
    assert 3 <= cut_at < steps
    saved = sorted(int(p.name) for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == cut_at  # the preemption save is the step the loop had finished

    resumed = _pretrain(tmp_path / "cut", data_dir, steps, config)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    if straight is not None:
        _, err = straight.communicate(timeout=600)
        assert straight.returncode == 0, err[-3000:]
    a, b = _losses(straight_dir), _losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
    meta = ocp.StandardCheckpointer().metadata(tmp_path / "cut" / "checkpoints" / str(steps) / "state").item_metadata
    dtypes = {str(leaf.dtype) for path, leaf in jax.tree_util.tree_leaves_with_path(meta.tree)
              if path[0].key in ("params", "opt_state") and leaf.shape}
    assert dtypes == {"float32"}
    for picture in pictures:  # the family's end-of-run pictures
        assert (straight_dir / picture).stat().st_size > 1000


def test_logical_rules_fall_back_to_replication():
    class FakeMesh:
        shape = {"data": 2, "fsdp": 4, "tensor": 2}

    rules = dict(embed="fsdp", mlp="tensor", heads="tensor")
    spec = sharding.logical_to_spec(("embed", "mlp"), (64, 256), rules.items(), FakeMesh)
    assert tuple(spec) == ("fsdp", "tensor")
    # 6 is not divisible by fsdp=4; the second 'tensor' use is dropped
    assert tuple(sharding.logical_to_spec(("embed", "mlp", "heads"), (6, 8, 4), rules.items(), FakeMesh)) == (
        None, "tensor", None)
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh(dict(data=2, fsdp=4, tensor=2), devices=list(range(8)))


@pytest.mark.slow
def test_kill_during_async_save_leaves_the_previous_checkpoint_restorable(tmp_path):
    worker = [sys.executable, str(ROOT / "tests" / "async_save_worker.py")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    saving = subprocess.Popen([*worker, "save", str(tmp_path)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    line = saving.stdout.readline()  # printed as soon as the async save of step 4 has started
    saving.send_signal(signal.SIGKILL)
    saving.communicate(timeout=60)
    assert line.startswith("SAVING"), saving.stderr
    left = sorted(os.listdir(tmp_path))
    assert "2" in left and "4" not in left and any(n.startswith("4.") for n in left), left  # killed mid-write
    out = subprocess.run([*worker, "restore", str(tmp_path)], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["latest"] == 2 and got["step"] == 2 and got["weights_equal"]
    assert got["next_item"] == got["expected_item"]  # the data iterator resumes after step 2's batches
    assert got["after_new_save"] == 4  # the half-written step does not block saving it again


def test_batch_size_must_split_over_hosts_and_batch_shards():
    from geolink_jax.train import trainer

    class FakeMesh:
        shape = {"data": 2, "fsdp": 4, "tensor": 1}

    trainer.check_batch_size(16, FakeMesh, process_count=2)
    with pytest.raises(ValueError, match="3 processes"):
        trainer.check_batch_size(16, FakeMesh, process_count=3)
    with pytest.raises(ValueError, match="8 batch shards"):
        trainer.check_batch_size(12, FakeMesh, process_count=2)


@pytest.mark.parametrize("name, encoder_params", [("geolink_vit_b", 85_645_056), ("geolink_vit_l", 303_096_832)])
def test_named_configs_build_their_models_and_shard_them(name, encoder_params):
    from flax import nnx

    from geolink_jax import config as config_lib
    from geolink_jax import family as family_lib
    from geolink_jax.geolink.model import GeoLink
    from geolink_jax.train import trainer

    config = trainer.resolve(config_lib.load_file(name), {"feature_dim": 384})
    assert config.model.dtype == "bfloat16" and config.batch_size % 8 == 0
    cfg = family_lib.model_config("geolink", config)
    assert cfg.osm_in_features == 384
    model = nnx.eval_shape(lambda: GeoLink(cfg, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    encoder = sum(int(np.prod(v.shape)) for path, v in flat if path[0] == "img_encoder")
    assert encoder == encoder_params

    class FakeMesh:  # the config's mesh on 8 devices
        shape = {k: (8 if v == -1 else v) for k, v in config.mesh.items()}

    specs = [sharding.logical_to_spec(v.get_metadata()["logical_axes"], v.shape, config.sharding_rules, FakeMesh)
             for _, v in flat]
    sharded = sum(int(np.prod(v.shape)) for (_, v), spec in zip(flat, specs) if any(a for a in spec))
    total = sum(int(np.prod(v.shape)) for _, v in flat)
    if FakeMesh.shape["fsdp"] > 1:
        assert sharded / total > 0.99  # FSDP: essentially every weight is split
    else:
        assert sharded == 0  # pure data parallelism: replicated
