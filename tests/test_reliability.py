"""Nothing is lost and nothing is silently wrong: damaged checkpoints are skipped (reported, set aside) and the run
resumes from the newest good one with exactly the losses it had; one metrics row per step; Ctrl-C saves like
SIGTERM; readers of a workdir skip a damaged latest checkpoint too; a checkpoint of other shapes is a config error
that leaves it in place."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import SUBPROCESS_ENV, pretrain_cmd

from geolink_jax import samples
from geolink_jax.tiles import job as preprocess
from geolink_jax.tiles import sources as tile_sources

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cmd(workdir, data_dir, steps, *extra):
    return pretrain_cmd(workdir, data_dir, steps, "--config.pictures=False", *extra)


def _run(*args):
    return subprocess.run(_cmd(*args), capture_output=True, text=True, timeout=600,
                          env=SUBPROCESS_ENV, cwd=ROOT)


def _rows(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _steps(workdir):
    names = [p.name for p in (pathlib.Path(workdir) / "checkpoints").iterdir() if not p.name.startswith(".")]
    return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else n))  # steps in order, then the rest


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.xdist_group("baseline")
def test_damaged_checkpoints_are_skipped_and_the_run_resumes_exactly(data_dir, baseline_run, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(baseline_run, w)  # 8 steps, checkpoints 4, 6, 8 kept
    assert _steps(w) == ["4", "6", "8"]
    before = {r["step"]: r["loss"] for r in _rows(w)}

    # 8: 256 bytes flipped in the middle of its largest state file; 6: its data-iterator state deleted
    largest = max((p for p in (w / "checkpoints" / "8" / "state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 256] = bytes(b ^ 0xFF for b in data[mid:mid + 256])
    largest.write_bytes(bytes(data))
    for f in (w / "checkpoints" / "6" / "data").rglob("*.json"):
        f.unlink()

    # readers of the workdir skip the damaged ones too
    from geolink_jax.convert import params_store

    family, params, _ = params_store.load_params(w)
    assert family == "geolink" and all(np.isfinite(x).all() for x in jax.tree.leaves(params))

    # resume (from 4) for 40 steps, then Ctrl-C: saved and stopped like SIGTERM
    again = subprocess.Popen(_cmd(w, data_dir, 40), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=SUBPROCESS_ENV, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline and again.poll() is None:
        if any(r["step"] >= 9 for r in _rows(w)):
            again.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert f"checkpoint {w / 'checkpoints' / '8'} skipped" in err
    assert f"checkpoint {w / 'checkpoints' / '6'} skipped" in err
    rows = _rows(w)
    last = rows[-1]["step"]
    assert 9 <= last < 40
    assert [r["step"] for r in rows] == list(range(1, last + 1))  # one row per step: 5..8 superseded, not repeated
    resumed = {r["step"]: r["loss"] for r in rows}
    # the resumed run's losses of steps 5-7 are the first run's exactly: their updates (counts 3-5) are in the
    # warmup or at its peak, which the longer total_steps does not change (the cosine after it would)
    np.testing.assert_array_equal([resumed[s] for s in range(5, 8)], [before[s] for s in range(5, 8)])
    assert np.isfinite(list(resumed.values())).all()
    # the bad ones are kept aside for inspection, outside the retention policy (which then counts good ones only);
    # the Ctrl-C save is the step the loop had finished
    kept = _steps(w)
    assert kept[-2:] == ["skipped-6", "skipped-8"] and kept[-3] == str(last) and len(kept) == 5, kept


@pytest.mark.slow
@pytest.mark.xdist_group("baseline")
def test_a_checkpoint_of_other_shapes_is_a_config_error_that_changes_nothing(data_dir, baseline_run, tmp_path):
    w = tmp_path / "w"
    shutil.copytree(baseline_run, w)
    config_before, steps_before = (w / "config.json").read_text(), _steps(w)
    out = _run(w, data_dir, 10, "--config.model.vit.width=128")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "was written for other shapes than this run's config" in out.stderr
    assert (w / "config.json").read_text() == config_before and _steps(w) == steps_before


def test_pretraining_reads_only_the_shards_its_manifest_lists(tmp_path):
    from geolink_jax.data.shards import DataError
    from geolink_jax.train import trainer

    d = tmp_path / "d"
    specs = tile_sources.discover_tiles(samples.OSM_TILES_DIR)
    preprocess.run_local(specs, tmp_path / "by_one", preprocess.PreprocessConfig(encoder="hash:8",
                                                                                 tiles_per_shard=1),
                         workers=1, progress=False)
    preprocess.run_local(specs, d, preprocess.PreprocessConfig(encoder="hash:8"), workers=1, progress=False)
    for f in (tmp_path / "by_one").glob("*.array_record-*"):  # stray shards of another run beside the manifest's
        f.rename(d / f.name)
    (d / "geolink_tiles.array_record-00000-of-00001.tmp-123").write_bytes(b"leftover")
    assert len(list(d.glob("*.array_record-*"))) == 7  # 5 + 1 shards and a leftover

    from geolink_jax import config as config_lib

    config = config_lib.load(["--config=demo", f"--config.data.path={d}"])
    paths, manifest = trainer.prepare_data(config, None)
    assert [p.name for p in paths] == [s["path"] for s in manifest["shards"]] == [
        "geolink_tiles.array_record-00000-of-00001"]
    manifest_file = d / "manifest.json"
    wrong = dict(manifest, feature_dim=64)  # a manifest that does not describe its shards
    manifest_file.write_text(json.dumps(wrong))
    with pytest.raises(DataError, match="00000-of-00001: 8-d tag features, the manifest says 64-d"):
        trainer.prepare_data(config, None)
    manifest_file.write_text(json.dumps(manifest))
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="geolink_tiles.array_record-00000-of-00001"):
        trainer.prepare_data(config, None)


def test_a_bit_flipped_shard_record_stops_pretraining_with_the_shard_and_record_named(data_dir, tmp_path):
    """riegeli's chunk hashes catch the flip; the run says which file and which record, in one line, exit 1."""
    import shutil

    from array_record.python.array_record_data_source import ArrayRecordDataSource

    d = tmp_path / "d"
    shutil.copytree(data_dir, d)
    shard = next(d.glob("*.array_record-*"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 4] ^= 0x10
    shard.write_bytes(bytes(data))
    source = ArrayRecordDataSource([str(shard)])
    damaged = []
    for i in range(len(source)):  # the ground truth, read directly
        try:
            source[i]
        except RuntimeError:
            damaged.append(i)
    assert len(damaged) == 1, damaged
    out = _run(tmp_path / "w", d, 4)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert line == [ln for ln in line if f"{shard}: record {damaged[0]} is damaged" in ln] and len(line) == 1, line


def test_convert_refuses_nonfinite_weights_and_a_config_that_contradicts_the_tensors(tmp_path, capsys):
    from flax import nnx
    from model_helpers import tiny_model

    from geolink_jax import cli
    from geolink_jax.convert import params_store

    model = tiny_model()
    params = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # writable copies
    params["img_norm"]["scale"][3] = np.nan
    params_store.save_params(tmp_path / "w", params, model.cfg)
    out = tmp_path / "w.safetensors"
    assert cli.main(["convert", "export", "--src", str(tmp_path / "w"), "--out", str(out)]) == 1
    assert "non-finite values (NaN/Inf) in img_norm/scale" in capsys.readouterr().err and not out.exists()
    assert cli.main(["convert", "export", "--src", str(tmp_path / "w"), "--out", str(out), "--allow-nonfinite"]) == 0
    assert cli.main(["convert", "import", "--src", str(out), "--out", str(tmp_path / "back")]) == 1
    err = capsys.readouterr().err
    assert "non-finite values (NaN/Inf) in" in err and "img_norm.weight" in err

    record = json.loads((tmp_path / "w" / "model_config.json").read_text())
    record["model"]["decoder_width"] = 48
    (tmp_path / "w" / "model_config.json").write_text(json.dumps(record))
    assert cli.main(["convert", "export", "--src", str(tmp_path / "w"), "--out", str(out), "--allow-nonfinite"]) == 1
    err = capsys.readouterr().err
    assert "tensors disagree with the recorded geolink model config" in err
    assert "img_cross_modal_decoder/0/mlp/fc1/bias: (128,) here, (192,) for the model config" in err


@pytest.mark.parametrize("args, message", [
    (["--out", "{f}"], "is a file, not a directory"),
    (["--out", "{f}/sub"], "is a file, not a directory"),
    (["--pbf", "/nonexistent.osm.pbf", "--out", "{d}/o"], "--pbf /nonexistent.osm.pbf: no such file"),
    (["--input", "{d}/nowhere", "--out", "{d}/o"], "no such directory"),
    (["--out", "{d}/full"], "exists and is not empty: pass --overwrite"),
])
def test_preprocess_refuses_bad_paths_before_any_work(tmp_path, capsys, args, message):
    from geolink_jax import cli

    (tmp_path / "f").write_text("a file")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "manifest.json").write_text("{}")
    args = [a.format(f=tmp_path / "f", d=tmp_path) for a in args]
    assert cli.main(["preprocess", "--encoder", "hash:8", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_preprocess_that_writes_no_tile_exits_nonzero(tmp_path, capsys):
    from geolink_jax import cli

    tiles = tmp_path / "tiles" / "t0"
    tiles.mkdir(parents=True)
    (tiles / "t0.png").write_bytes(b"not a png")
    (tiles / "t0.json").write_text(json.dumps({"bbox_west_south_east_north": [24.9, 60.1, 24.91, 60.11]}))
    assert cli.main(["preprocess", "--input", str(tmp_path / "tiles"), "--out", str(tmp_path / "o"), "--encoder",
                     "hash:8", "--workers", "1", "--no-progress"]) == 1
    assert "no tile was written (1 failed" in capsys.readouterr().err
    assert (tmp_path / "o" / "errors.jsonl").read_text().count('"severity": "error"') == 1


def test_preprocess_survives_a_killed_worker_and_exits_nonzero(tmp_path):
    spec = tile_sources.discover_tiles(samples.OSM_TILES_DIR)[2]
    victim = spec.tile_id
    out = subprocess.run([sys.executable, "-m", "geolink_jax.cli", "preprocess", "--workers", "2", "--encoder",
                          "hash:8", "--out", str(tmp_path / "o"), "--no-progress"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                         GEOLINK_TEST_KILL_WORKER_ON=str(spec.index)))
    assert out.returncode == 1, out.stderr[-3000:]
    assert f"worker processes died on 1 tile(s) ({victim})" in out.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["num_records"] == 4 and manifest["runner"]["dead_worker_tiles"] == [victim]
    problems = [json.loads(line) for line in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    assert [p["tile_id"] for p in problems if p["reason"].startswith("worker process died")] == [victim]


def test_a_truncated_or_garbage_safetensors_file_is_one_line(tmp_path, capsys):
    from geolink_jax import cli

    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    assert cli.main(["convert", "import", "--src", str(tmp_path / "garbage.safetensors"), "--out",
                     str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "garbage.safetensors: not a readable safetensors file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["osm_aggr_mlp.point.weight", "osm_encoder.convs.0.convs.<line___to___line>.lin.weight",
                                 "img_encoder.patch_embed.proj.weight", "img_consistency_prj.weight"])
def test_convert_import_blames_only_the_wrong_shaped_tensor(tmp_path, capsys, key):
    """Each inferred dimension is carried by several tensors; when the one it used to be read from is wrong, the
    error names that tensor with both shapes, not the correct tensors sharing the dimension."""
    from model_helpers import np_params, tiny_model

    from geolink_jax import cli
    from geolink_jax.convert import files
    from geolink_jax.geolink import convert

    # every dimension distinct, so that inferring one from the wrong tensor could not pass by coincidence
    dims = dict(osm_in_features=12, osm_hidden=24, graph_embed_dim=20, fusion_dim=40, decoder_width=48,
                contrastive_dim=8)
    model = tiny_model(**dims)
    sd = convert.official_state_dict(np_params(model), model.cfg)
    assert convert.infer_config(sd, 4, 4, 4) == model.cfg
    good = sd[key].shape
    sd[key] = np.zeros((good[0] + 1, *good[1:]), np.float32)
    files.save_weights(sd, tmp_path / "bad.safetensors")
    assert cli.main(["convert", "import", "--src", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "x"),
                     "--heads", "4", "--decoder-heads", "4", "--fusion-heads", "4"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    blamed = [p.split(":")[0] for p in err.split("bad.safetensors: ", 1)[1].strip().split("; ")]
    assert blamed == [key], err
    assert f"{(good[0] + 1, *good[1:])}" in err and f"expected {good}" in err, err


def test_a_second_damaged_checkpoint_of_a_step_is_kept_beside_the_first(tmp_path):
    """Issue 28, item 3: setting a damaged checkpoint aside never deletes an earlier one of the same step."""
    from geolink_jax.train.checkpoint import aside_path

    ckpts = tmp_path / "checkpoints"
    (ckpts / "6").mkdir(parents=True)
    first = aside_path(ckpts, 6)
    (ckpts / "6").rename(first)
    (ckpts / "6").mkdir()
    (ckpts / "6" / "marker").write_text("second")
    second = aside_path(ckpts, 6)
    (ckpts / "6").rename(second)
    assert (first.name, second.name) == ("skipped-6", "skipped-6-2") and first.is_dir()
    assert (second / "marker").read_text() == "second" and aside_path(ckpts, 6).name == "skipped-6-3"


def test_a_run_that_skipped_too_many_steps_as_nonfinite_fails_in_one_line():
    """Issue 28, item 4: skipped steps are counted (metrics.jsonl `skipped_steps`, the final line) and past
    `nonfinite_max_fraction` of the run the run fails: exit 1 through the CLI's one-line error."""
    from geolink_jax.train.trainer import check_skipped

    check_skipped(1, 40, 0.05, "W")  # 2.5 %: a warning in the final line, not a failure
    with pytest.raises(FloatingPointError, match="3 of the 40 steps this run made were skipped as non-finite"):
        check_skipped(3, 40, 0.05, "W")
    from geolink_jax import cli

    assert cli.user_errors("pretrain", {})[FloatingPointError] == 1


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(monkeypatch, capsys):
    """Issue 28, item 10: Ctrl-C before pretraining has its own SIGINT handler (loading, initialising, compiling)
    ends with one line and exit 130, not a KeyboardInterrupt traceback."""
    from geolink_jax import cli

    def interrupted(args, overrides=()):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_pretrain", interrupted)
    assert cli.main(["pretrain", "--config", "demo", "--workdir", "W"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: pretrain") and "Traceback" not in err
