"""`geolink-jax bench`: result-row schema, ratios recomputed from the measured values, sweeps, the report."""

import copy
import json
import math
import os
import pathlib
import statistics

import pytest

from geolink_jax import cli
from geolink_jax.bench import report, rows, runner, sweep
from geolink_jax.config import ConfigError

MINIMAL = pathlib.Path(__file__).parent / "data" / "bench_minimal.py"


def _row():
    row = rows.new_row("mask", "unit", {"config": "demo", "mesh.data": 1})
    row["times_s"]["mask_0.0"] = rows.stats([0.30, 0.20, 0.25])
    row["times_s"]["mask_0.75"] = rows.stats([0.08, 0.06, 0.07])
    rows.ratio(row, "mask_0.75_over_0.0", "times_s.mask_0.75.median", "times_s.mask_0.0.median", target=0.35)
    return row


def test_row_ratios_and_stats_are_checked_against_the_measured_values():
    row = rows.validate_row(_row())
    assert row["times_s"]["mask_0.0"]["median"] == 0.25 and row["times_s"]["mask_0.0"]["max"] == 0.30
    assert row["ratios"]["mask_0.75_over_0.0"]["value"] == pytest.approx(0.07 / 0.25)
    assert row["ratios"]["mask_0.75_over_0.0"]["met"] is True
    assert rows.resolve(row, "times_s.mask_0.75.min") == 0.06  # keys with dots resolve

    tampered = copy.deepcopy(row)
    tampered["ratios"]["mask_0.75_over_0.0"]["value"] = 0.2
    with pytest.raises(ValueError, match="mask_0.75_over_0.0"):
        rows.validate_row(tampered)
    tampered = copy.deepcopy(row)
    tampered["times_s"]["mask_0.0"]["median"] = 0.2
    with pytest.raises(ValueError, match="not the stats of its samples"):
        rows.validate_row(tampered)
    tampered = copy.deepcopy(row)
    tampered["config"]["config"] = "geolink_vit_b"
    with pytest.raises(ValueError, match="config_hash"):
        rows.validate_row(tampered)
    tampered = copy.deepcopy(row)
    del tampered["env"]["device_kind"]
    with pytest.raises(ValueError, match="device_kind"):
        rows.validate_row(tampered)


def test_sweeps_resolve_with_ml_collections_and_reject_unknown_fields():
    base, runs = runner.load_sweep("quick")
    cfgs = runner.plan(base, runs, overrides=["--config.step.repeats=7"])
    steps = [c for c in cfgs if c.suite == "step"]
    assert [c.batch for c in steps if c.config == "demo"] == [2, 4, 8] and all(c.repeats == 7 for c in steps)
    assert {c.config for c in steps} == {"demo", "dofa_clip_demo"}
    assert {c.suite for c in cfgs} == set(runner.SUITES)
    assert [c.suite for c in runner.plan(base, runs, only=["mask"])] == ["mask"]
    with pytest.raises(KeyError, match="not a field"):
        sweep.resolve(base, {"suite": "step", "step.batchsize": 4})
    with pytest.raises(ConfigError, match=r"--config.step.nope: no such field; valid: .*config.step.repeats"):
        runner.plan(base, runs, overrides=["--config.step.nope=1"])
    _, cpu_runs = runner.load_sweep("cpu")
    assert len(cpu_runs) > len(runs)


def test_gpu_sweep_fits_its_8_minute_budget_and_covers_the_issue():
    """ViT-L bf16 steps (MFU target 45%) with cuDNN and XLA attention, GAIR's step without and with remat, a
    DOFA-CLIP step, the input
    cost with 15 workers, the official step side by side when a checkout is given; the estimate (with a reference
    run) within 480 s."""
    base, runs = runner.load_sweep("gpu")
    cfgs = runner.plan(base, runs, reference_repo="/some/checkout")
    steps = [c for c in cfgs if c.suite == "step"]
    assert {c.config for c in steps} == {"geolink_vit_l", "dofa_clip_b16"}
    remat = [c for c in cfgs if c.suite == "remat"]  # GAIR's step, without and with remat
    assert [(c.config, list(c.policies)) for c in remat] == [("gair_vit_b", ["none", "full"])]
    assert {c.dtype for c in steps + remat} == {"bfloat16"}
    vit_l = [c for c in steps if c.config == "geolink_vit_l"]
    assert {c.attention_impl for c in vit_l} == {"cudnn", "xla"} and vit_l[0].mfu_target == 0.45
    assert [c.workers for c in cfgs if c.suite == "input"] == [15]
    assert any(c.suite == "reference" for c in cfgs)
    assert runner.estimate_s(cfgs) <= runner.budget_s(base) == 480.0
    assert runner.budget_s(base, ["--config.budget_s=600"]) == 600.0


def test_the_estimate_is_printed_first_and_the_budget_stops_the_sweep(tmp_path, capsys):
    base, _ = runner.load_sweep(str(MINIMAL))
    cfgs = runner.plan(base, [{"suite": "step", "est_s": 30.0}, {"suite": "mask", "est_s": 42.0},
                              {"suite": "reference"}])
    found = runner.execute(cfgs, tmp_path, progress=True, budget_s=3.0)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "estimated runtime: 3 runs, ~1.2 min (budget 0.1 min)"  # reference: no checkout, 0 s
    assert found[0]["status"] == "error" and "time budget" in found[0]["reason"] and found[0]["wall_s"] < 30
    assert found[1]["status"] == "skipped" and "budget" in found[1]["reason"]
    assert found[2]["status"] == "skipped" and "checkout" in found[2]["reason"]


@pytest.mark.slow
def test_minimal_suite_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench"
    code = cli.main(["bench", "--suite", str(MINIMAL), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    found = rows.read(out / "rows.jsonl")
    assert code == 0, [r.get("reason") for r in found]
    by_suite = {r["suite"]: r for r in found}
    assert list(by_suite) == ["step", "mask", "compile", "preprocess", "memory", "reference"]
    for row in found:
        rows.validate_row(row)
        assert row["env"]["jax"] and row["env"]["device_kind"] and row["env"]["xla"]
        assert len(row["config_hash"]) == 12

    step = by_suite["step"]
    t = step["times_s"]["step"]
    assert t["n"] == 2 and t["min"] <= t["median"] <= t["max"]
    m = step["metrics"]
    assert m["samples_per_s"] == pytest.approx(2 / statistics.median(t["samples"]))
    assert m["model_flops_per_s_per_device"] == pytest.approx(m["model_flops_per_device_step"] / t["median"])
    # the analytic FLOP count agrees with XLA's cost analysis of the compiled step
    assert 0.8 <= step["ratios"]["analytic_over_xla_flops"]["value"] <= 1.2
    assert "mfu" not in step["ratios"]  # a CPU has no known peak unless one is given

    mask = by_suite["mask"]
    med = {k: statistics.median(v["samples"]) for k, v in mask["times_s"].items()}
    assert mask["ratios"]["mask_0.75_over_0.0"]["value"] == pytest.approx(med["mask_0.75"] / med["mask_0.0"])
    assert mask["metrics"]["model_flops_mask_0.75"] < mask["metrics"]["model_flops_mask_0.0"]

    comp = by_suite["compile"]["metrics"]
    assert comp["padded_backend_compiles"] == 1 and comp["padded_distinct_batch_shapes"] == 1

    mem = by_suite["memory"]
    assert mem["env"]["device_count"] == 2  # ran in a child process with 2 simulated devices
    assert mem["ratios"]["1x2x1_state_over_2x1x1"]["value"] == pytest.approx(
        mem["metrics"]["1x2x1.state_bytes_compiled"] / mem["metrics"]["2x1x1.state_bytes_compiled"])
    assert mem["ratios"]["1x2x1_state_over_2x1x1"]["value"] < 0.65  # FSDP over 2 holds about half

    ref = by_suite["reference"]
    assert ref["status"] == "skipped" and "--reference-repo" in ref["reason"]

    md = (out / "results.md").read_text()
    assert "| step | demo b2 float32 |" in md and "skipped" in md and "![step_time_vs_mask_ratio]" in md
    assert (out / "step_time_vs_mask_ratio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "ratios.mask_0.75_over_0.0" in header and "env.device_kind" in header
    assert "| mask |" in printed  # the table is printed

    # bench report re-makes the same table from the rows
    code = cli.main(["bench", "report", "--rows", str(out / "rows.jsonl"), "--out", str(tmp_path / "again")])
    assert code == 0
    assert report.markdown_table(found) in (tmp_path / "again" / "results.md").read_text()


@pytest.mark.slow
def test_step_and_memory_suites_run_any_family(tmp_path):
    """The MAE family's bench rows (its compile row: the wheel test in test_families.py)."""
    base, _ = runner.load_sweep(str(MINIMAL))
    cfgs = runner.plan(base, [{"suite": "step", "config": "mae_demo"}, {"suite": "memory", "config": "mae_demo"}])
    step, mem = runner.execute(cfgs, tmp_path, progress=False)
    assert step["status"] == mem["status"] == "ok", (step.get("reason"), mem.get("reason"))
    assert 0.8 <= step["ratios"]["analytic_over_xla_flops"]["value"] <= 1.2  # the MAE's analytic FLOPs
    assert mem["ratios"]["1x2x1_state_over_2x1x1"]["value"] < 0.65  # FSDP over 2 holds about half of the MAE


def test_input_cost_suite_measures_both_paths(tmp_path):
    """Host CPU per sample, host path and on-device augmentation, alternated; the stage breakdown of each; the
    on-device path costs the host less (no Pillow crop/resize/jitter/normalise)."""
    base, _ = runner.load_sweep(str(MINIMAL))
    cfgs = runner.plan(base, [{"suite": "input", "config": "geolink_vit_b", "batch": 8, "batches": 3, "rounds": 1,
                               "settle_s": 0.3, "breakdown_samples": 20}])
    (row,) = runner.execute(cfgs, tmp_path, progress=False)
    assert row["status"] == "ok", row.get("reason")
    m = row["metrics"]
    assert m["host_ms_core_per_sample"] > 0 and m["device_ms_core_per_sample"] > 0
    assert m["breakdown_ms.host.pixels"] > 3 * m["breakdown_ms.device.pixels"]
    assert row["ratios"]["device_over_host"]["value"] < 0.8


def test_input_cost_suite_runs_gair_on_its_own_data_per_photo(tmp_path):
    """Any family on its bundled data (issue 27): GAIR's demo patches preprocessed with photos stored at the
    model's size, cost per record and per real photo (counted from the batches: 5 a patch, up to the budget)."""
    base, _ = runner.load_sweep(str(MINIMAL))
    # 64 patches: enough CPU time (~0.1 s) that psutil's 10 ms ticks and the idle-rate correction cannot zero it
    cfgs = runner.plan(base, [{"suite": "input", "config": "gair_demo", "batch": 8, "batches": 8, "rounds": 1,
                               "settle_s": 0.2, "preprocess_args": ["--sv-size", "32", "--sv-format", "raw"]}])
    (row,) = runner.execute(cfgs, tmp_path, progress=False)
    assert row["status"] == "ok", row.get("reason")
    from geolink_jax import config as config_lib

    m = row["metrics"]
    photos = min(5, config_lib.load_file("gair_demo").model.sv_budget)  # a demo patch has 5
    assert m["unit"] == "photos" and m["images_per_record"] == photos and "sv-size 32" in row["name"]
    for path in ("host", "device"):
        assert m[f"{path}_ms_core_per_image"] == pytest.approx(m[f"{path}_ms_core_per_sample"] / photos)
        assert m[f"{path}_ms_core_per_sample"] > 0


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    base, _ = runner.load_sweep(str(MINIMAL))
    cfgs = runner.plan(base, [{"suite": "pipeline", "config": "no_such_config"},
                              {"suite": "reference"}])
    found = runner.execute(cfgs, tmp_path, progress=False)
    assert [r["status"] for r in found] == ["error", "skipped"]
    assert "no_such_config" in found[0]["reason"]
    assert len(rows.read(tmp_path / "rows.jsonl")) == 2
    json.dumps(found)


def test_reference_inputs_are_the_same_graphs_in_the_official_form():
    """The side-by-side feeds the official model the bundled graphs as HeteroData: x = [features | positions],
    the 9 typed edge sets, nothing dropped (no padding on that side)."""
    from geolink_jax.bench import reference_bench
    from geolink_jax.osm import NODE_TYPES, RELATIONS, osm_graph, relation_name

    with pytest.raises(reference_bench.OfficialModelError, match="not a GeoLink_NeurIPS2025 checkout"):
        reference_bench.import_official(pathlib.Path(__file__).parent)
    graph = osm_graph.sample_ufz_graphs()[0]
    data = reference_bench.hetero_data(graph)
    for t in NODE_TYPES:
        x = data[t].x.numpy()
        assert x.shape == (graph.num_nodes(t), graph.features[t].shape[1] + graph.positions[t].shape[1])
        assert (x[:, : graph.features[t].shape[1]] == graph.features[t]).all()
    for s, d in RELATIONS:
        assert (data[s, "to", d].edge_index.numpy() == graph.edge_index[relation_name(s, d)]).all()


@pytest.mark.skipif(not os.environ.get("GEOLINK_OFFICIAL_REPO"),
                    reason="set GEOLINK_OFFICIAL_REPO to a checkout of bailubin/GeoLink_NeurIPS2025 to run the "
                           "official model side by side (it cannot be fetched in CI)")
def test_reference_suite_runs_the_official_model(tmp_path):
    base, _ = runner.load_sweep(str(MINIMAL))
    cfgs = runner.plan(base, [{"suite": "reference"}], reference_repo=os.environ["GEOLINK_OFFICIAL_REPO"])
    (row,) = runner.execute(cfgs, tmp_path, progress=False)
    assert row["status"] == "ok", row.get("reason")
    t = row["times_s"]
    assert row["ratios"]["speedup_vs_official"]["value"] == pytest.approx(
        statistics.median(t["official"]["samples"]) / statistics.median(t["geolink_jax"]["samples"]))
    assert row["metrics"]["official_params"] > 0 and math.isfinite(row["metrics"]["official_last_loss"])
