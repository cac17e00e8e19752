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
    (["--pbf", "{d}/g.osm.pbf", "--out", "{d}/o"], "g.osm.pbf: not a readable OSM file (PBF error"),  # item 13
    (["--input", "{d}/nowhere", "--out", "{d}/o"], "no such directory"),
    (["--out", "{d}/full"], "exists and is not empty: pass --overwrite"),
])
def test_preprocess_refuses_bad_paths_before_any_work(tmp_path, capsys, args, message):
    from geolink_jax import cli

    (tmp_path / "f").write_text("a file")
    (tmp_path / "g.osm.pbf").write_bytes(b"garbage" * 100)  # issue 28, item 13
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


def test_a_workdir_is_one_runs_and_a_dead_runs_lock_is_taken_over(tmp_path, capsys):
    """Issue 28, item 1: a second `pretrain` on a workdir that a live run holds refuses in one line naming that
    run's PID and host, before writing anything; the lock of a killed run (kill -9) is taken over with a warning;
    one of another host is refused (its liveness cannot be seen from here)."""
    import socket

    from geolink_jax import cli
    from geolink_jax.train import workdir_lock

    w = tmp_path / "w"
    w.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from geolink_jax.train import workdir_lock; "
                               f"workdir_lock.acquire({str(w)!r}); print('held', flush=True); time.sleep(60)"],
                              env=SUBPROCESS_ENV, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        rc = cli.main(["pretrain", "--config", "demo", "--workdir", str(w), "--config.total_steps=1"])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1, err
        assert f"workdir in use by PID {holder.pid} on {socket.gethostname()}" in err, err
        assert sorted(p.name for p in w.iterdir()) == ["lock.json"]  # nothing else written
    finally:
        holder.kill()  # as kill -9: the flock goes, the file still names the dead process
        holder.wait()
    warnings = []
    fd = workdir_lock.acquire(w, warn=warnings.append)
    assert len(warnings) == 1 and f"taking over the lock of PID {holder.pid}" in warnings[0], warnings
    workdir_lock.release(fd)
    assert (w / "lock.json").read_text() == ""  # released: free for the next run, no warning
    with workdir_lock.hold(w, warn=warnings.append):
        pass
    assert len(warnings) == 1
    (w / "lock.json").write_text(json.dumps(dict(pid=7, host="other-host")))
    with pytest.raises(workdir_lock.WorkdirInUse, match="locked by PID 7 on other-host .* delete .*lock.json"):
        workdir_lock.acquire(w)


def test_a_worker_killed_once_and_retried_leaves_a_warning_row(tmp_path):
    """Issue 28, item 12: the item whose worker died is retried alone; when the retry succeeds the tile is written
    and errors.jsonl holds a warning row naming it (the run succeeds)."""
    spec = tile_sources.discover_tiles(samples.OSM_TILES_DIR)[0]  # the first: the one retried when its pool breaks
    out = subprocess.run([sys.executable, "-m", "geolink_jax.cli", "preprocess", "--workers", "2", "--encoder",
                          "hash:8", "--out", str(tmp_path / "o"), "--no-progress"], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT),
                                                         GEOLINK_TEST_KILL_WORKER_ON=f"{spec.index}:{tmp_path}/k"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "k").exists()  # the worker was killed once
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["num_records"] == 5 and manifest["runner"]["dead_worker_tiles"] == []
    rows = [json.loads(line) for line in (tmp_path / "o" / "errors.jsonl").read_text().splitlines()]
    retried = [r for r in rows if r["reason"].startswith("retried alone")]
    assert [(r["tile_id"], r["severity"]) for r in retried] == [(spec.tile_id, "warning")], rows


def test_a_file_of_another_family_is_one_short_line(tmp_path, capsys):
    """Issue 28, item 7: a file whose metadata records another family than --family is one line naming both; a
    file of another layout without metadata is one short line (counts and first keys), never a key dump."""
    from geolink_jax import cli
    from geolink_jax.convert import files

    rng = np.random.default_rng(0)
    keys = {f"visual.trunk.blocks.{i}.{k}": rng.normal(size=(4,)) for i in range(40) for k in ("a", "b", "c")}
    files.save_weights(keys, tmp_path / "gair_like.safetensors", dict(family="gair", model={}))
    files.save_weights(keys, tmp_path / "bare.safetensors")
    rc = cli.main(["convert", "import", "--family", "dofa_clip", "--src", str(tmp_path / "gair_like.safetensors"),
                   "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1, err
    assert "gair_like.safetensors: its metadata records a gair model, not --family dofa_clip" in err
    for family in ("geolink", "mae", "gair", "dofa_clip"):
        rc = cli.main(["convert", "import", "--family", family, "--src", str(tmp_path / "bare.safetensors"),
                       "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and len(err) < 600, (family, err[:2000])
        assert "the file has 120 tensors: visual.trunk.blocks.0.a" in err, (family, err)
    assert not (tmp_path / "o").exists()


def test_shards_or_a_workdir_of_another_family_are_one_line(tmp_path, capsys):
    """Issue 28, items 8 and 14: pretraining on another family's shards names the directory and both record
    formats; a workdir holding another family's run is named as such; `embed` with inputs its model's family does
    not read (the default bundled GeoLink tiles for a GAIR model) names the directory."""
    from geolink_jax import cli
    from geolink_jax import family as family_lib
    from geolink_jax.data.shards import DataError

    data = tmp_path / "pairs"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps(dict(format="geolink_jax.dofa_clip_pair", family="dofa_clip")))
    assert cli.main(["pretrain", "--config", "demo", "--workdir", str(tmp_path / "w"),
                     f"--config.data.path={data}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{data}: holds geolink_jax.dofa_clip_pair records (made by `preprocess " \
        "--family dofa_clip`); the geolink family reads geolink_jax.tile records" in err, err
    (tmp_path / "w" / "config.json").write_text(json.dumps(dict(family="geolink")))
    assert cli.main(["pretrain", "--config", "gair_demo", "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "w: holds a geolink run (its config.json), and this config is a gair run" in err
    with pytest.raises(DataError, match=r"--tiles .*osm_tiles \(the default: the bundled GeoLink tiles\): no "
                                        r"manifest.json; WG is a gair model"):
        cli.check_embed_inputs(family_lib.get_family("gair"), samples.OSM_TILES_DIR, "WG")
    with pytest.raises(DataError, match="pairs: holds geolink_jax.dofa_clip_pair records"):
        cli.check_embed_inputs(family_lib.get_family("geolink"), data, "WL")


@pytest.mark.xdist_group("baseline")
def test_a_truncated_checkpoint_file_is_one_warning_line(baseline_run, tmp_path, capfd):
    """Issue 28, item 5: a data file of the newest checkpoint cut to half its size: the reader falls back with one
    warning line that says "truncated" and names the array, and nothing else reaches stderr (orbax's abandoned reads
    used to print a traceback and a TensorStore spec each, thousands of lines). Restored into shards (`merge
    --mesh`'s reader) the same: one line, the older checkpoint's weights."""
    import gc

    from geolink_jax.convert import merge, params_store
    from geolink_jax.train import checkpoint, sharding

    w = tmp_path / "w"
    shutil.copytree(baseline_run, w)
    largest = max((p for p in (w / "checkpoints" / "8" / "state").rglob("*") if p.is_file()),
                  key=lambda p: p.stat().st_size)
    os.truncate(largest, largest.stat().st_size // 2)
    lines = []
    step, _ = checkpoint.load_verified(w / "checkpoints", report=lines.append)
    # restored into shards (merge --mesh): the same fallback and the same one line
    sharded = merge.load_sharded(w, sharding.make_mesh({"fsdp": -1}), report=lines.append)
    gc.collect()
    time.sleep(0.5)  # the abandoned reads report from other threads
    gc.collect()
    assert step == 6 and len(lines) == 2, lines  # each names the first damaged array its own reads met
    assert all(line.startswith(f"warning: checkpoint {w / 'checkpoints' / '8'} skipped: a file of it is truncated")
               for line in lines), lines
    assert capfd.readouterr().err == ""
    host = params_store.load_params(w)  # step 6 on the host: the sharded restore holds the same weights
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), host.params,
                                     sharded.params))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 3 MiB tmpfs (root only; skipped with the reason elsewhere)."""
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, and mounting one needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield small
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_full_disk_stops_the_run_in_one_line_with_the_last_checkpoint_intact(small_filesystem, capfd):
    """Issue 28, item 2: an asynchronous save that hits ENOSPC is an error (one line naming the directory, "no space
    left on device" and the last good checkpoint) at the latest by the next save; its partial directory is removed;
    a save that would not fit is warned of beforehand; orbax's own reports of the failure do not reach stderr."""
    import grain
    import jax.numpy as jnp

    from geolink_jax.train.checkpoint import Checkpointer, CheckpointError

    warnings = []
    ckpt = Checkpointer(small_filesystem / "ck", save_every=1, keep=10, async_save=True, report=warnings.append)
    data = iter(grain.MapDataset.range(100).to_iter_dataset())
    state = {"w": jax.random.normal(jax.random.key(0), (256, 1024), jnp.float32)}  # 1 MiB a checkpoint: random
    # bits, which the checkpoint's compression cannot shrink
    with pytest.raises(CheckpointError) as failed:
        for step in range(1, 8):
            ckpt.save(step, state, data, "{}")
        ckpt.wait()
    ckpt.close()
    message = str(failed.value)
    assert f"{small_filesystem / 'ck'}: saving a checkpoint failed (no space left on device)" in message, message
    kept = sorted(p.name for p in (small_filesystem / "ck").iterdir())
    assert all(name.isdigit() for name in kept) and kept, kept  # committed steps only: no partial directory
    assert f"the last good checkpoint is step {max(map(int, kept))} (the partial one removed)" in message
    assert len(warnings) == 1 and "MiB free, a checkpoint takes" in warnings[0], warnings
    import gc

    gc.collect()
    assert capfd.readouterr().err == ""
