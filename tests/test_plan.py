"""`geolink-jax plan`: compile-only plans on small simulated meshes (memory, collectives, fit and suggestion),
the HLO collective reader on known text, and the CLI end to end."""

import json
import pathlib
import subprocess
import sys

import pytest
from conftest import SUBPROCESS_ENV

from geolink_jax import cli
from geolink_jax.train import plan

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checks(eight_devices):
    return eight_devices("scenarios:plan_checks")


@pytest.mark.xdist_group("eight_devices")
def test_plan_memory_agrees_with_the_memory_bench(checks):
    m = checks["memory"]
    assert abs(m["plan_state"] - m["bench_state"]) <= 0.02 * m["bench_state"]
    assert m["plan_state"] == m["bench_shardings"]  # the same shard sizes, read the same way
    assert m["plan_peak"] >= m["plan_arguments"] > m["plan_state"]  # the batch slice and temporaries come on top


@pytest.mark.xdist_group("eight_devices")
def test_pure_fsdp_collectives_match_the_analytic_count(checks):
    """Weights are gathered in the forward and again in the backward pass: 2·S·(n−1)/n bytes sent per device for
    S bytes of FSDP-sharded weights (within 10%). Gradients are reduced across the 8 devices: XLA:CPU emits
    all-reduces there (it has no reduce-scatter creator pass; GPU and TPU turn all-reduce + slice into a
    reduce-scatter, half the bytes), so the CPU count is 2·(S + R)·(n−1)/n with R the replicated weights."""
    f = checks["fsdp"]
    n, s, r = 8, f["sharded_bytes"], f["replicated_bytes"]
    c = f["collectives"]
    assert s > 20 * r  # the weights that matter are sharded
    gathered = c["all-gather"]["traffic_bytes"]
    reduced = c["all-reduce"]["traffic_bytes"] + 2 * c["reduce-scatter"]["traffic_bytes"]
    assert abs(gathered - 2 * s * (n - 1) / n) <= 0.10 * (2 * s * (n - 1) / n), gathered
    assert abs(reduced - 2 * (s + r) * (n - 1) / n) <= 0.10 * (2 * (s + r) * (n - 1) / n), reduced
    assert c["all-gather"]["max_group"] == n


@pytest.mark.xdist_group("eight_devices")
def test_a_plan_that_does_not_fit_is_flagged_and_the_suggested_mesh_fits(checks):
    s = checks["suggest"]
    assert not s["dp_fits"] and s["f8_fits"]
    assert s["mesh"] is not None and s["mesh"]["fsdp"] > 1 and s["suggested_peak"] <= s["limit"]


def test_collectives_are_read_from_hlo_text():
    hlo = "\n".join([
        "  %all-gather.1 = f32[1024,256]{1,0} all-gather(f32[128,256]{1,0} %p), replica_groups=[4,8]<=[32], "
        "dimensions={0}",
        "  %ar = (f32[], bf16[64,64]{1,0}, f32[], f32[], f32[], /*index=5*/f32[2]{0}) all-reduce(%a, %b, %c, %d, %e, "
        "%f), replica_groups={{0,1},{2,3}}, to_apply=%add",
        "  %rs = f32[16]{0} reduce-scatter(f32[128]{0} %g), replica_groups=mesh['axis_0'=4,'axis_1'=8] {'axis_1'}",
        "  %ags = (f32[8]{0}, f32[64]{0}) all-gather-start(f32[8]{0} %x), replica_groups=mesh['axis_0'=2,"
        "'axis_1'=4], device_ids=([4,2]T(1,0)) {'axis_1'}, dimensions={0}",
        "  %not = f32[8]{0} add(%all-gather.1, %x)",
    ])
    c = plan.collectives(hlo, 32)
    assert c["all-gather"]["count"] == 2 and c["all-gather"]["result_bytes"] == 1024 * 256 * 4 + 64 * 4
    assert c["all-gather"]["traffic_bytes"] == 1024 * 256 * 4 * 7 / 8 + 64 * 4 * 3 / 4
    assert c["all-reduce"]["result_bytes"] == 4 + 64 * 64 * 2 + 3 * 4 + 8 and c["all-reduce"]["max_group"] == 2
    assert c["all-reduce"]["traffic_bytes"] == 2 * (4 + 64 * 64 * 2 + 3 * 4 + 8) * 1 / 2
    assert c["reduce-scatter"]["traffic_bytes"] == 16 * 4 * 7 and c["reduce-scatter"]["max_group"] == 8
    assert c["all-gather"]["payload"] == {8: 1024 * 256 * 4, 4: 64 * 4}


def test_collective_time_is_hierarchical_across_gpu_nodes():
    """An all-reduce of P bytes over 64 GPUs (8 nodes): 2·7/8·P over NVLink plus 2·7/8·P/8 over the network,
    not 2·63/64·P over the network; on a TPU slice the ring runs over ICI."""
    p = 1e9
    colls = {k: dict(payload={}) for k in ("all-gather", "reduce-scatter", "all-reduce", "all-to-all",
                                            "collective-permute")}
    colls["all-reduce"]["payload"] = {64: p}
    h100, v5p = plan.CHIPS["h100"], plan.CHIPS["v5p"]
    expected = 2 * 7 / 8 * p / h100.link_bw + 2 * 7 / 8 * p / 8 / h100.network_bw
    assert plan.collective_seconds(colls, h100) == pytest.approx(expected)
    assert plan.collective_seconds(colls, v5p) == pytest.approx(2 * 63 / 64 * p / v5p.link_bw)
    colls["all-reduce"]["payload"] = {8: p}  # inside one node: NVLink only
    assert plan.collective_seconds(colls, h100) == pytest.approx(2 * 7 / 8 * p / h100.link_bw)


@pytest.mark.slow
def test_plan_cli_prints_a_plan_and_refuses_bad_input(tmp_path, capsys):
    # a fresh process per plan (its device count is fixed when JAX starts), without the compilation cache
    env = {k: v for k, v in SUBPROCESS_ENV.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    cmd = [sys.executable, "-m", "geolink_jax.cli", "plan", "--config", "mae_demo", "--devices", "4", "--mesh",
           "data=2,fsdp=2", "--batch", "8", "--chip", "h100,v5e", "--json", str(tmp_path / "plan.json")]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "h100: step" in out.stdout and "v5e: step" in out.stdout and "all-gather" in out.stdout
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["measured"]["devices"] == 4 and set(saved["rooflines"]) == {"h100", "v5e"}
    # one device whose memory (5.4 MiB here: --hbm-gib) the plan does not fit: flagged, and the smallest pure-FSDP
    # device count that fits is found and compiled (4 of them)
    small = [sys.executable, "-m", "geolink_jax.cli", "plan", "--config", "mae_demo", "--devices", "1", "--batch",
             "16", "--chip", "h100", "--hbm-gib", "0.0054", "--json", str(tmp_path / "small.json")]
    out = subprocess.run(small, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DOES NOT FIT" in out.stdout
    suggestion = json.loads((tmp_path / "small.json").read_text())["suggestions"]["h100"]
    assert suggestion["devices"] > 1 and suggestion["mesh"]["fsdp"] == suggestion["devices"]
    assert suggestion["peak_bytes"] <= plan.HEADROOM * 0.0054 * 2 ** 30
    assert cli.main(cmd[3:-4] + ["--chip", "tpu9"]) == 2  # refused before any device is asked for
    err = capsys.readouterr().err
    assert err.strip().startswith("error: --chip tpu9: unknown") and "Traceback" not in err
    # impossible device counts and meshes (issue 28, item 9): exit 2, one line, before JAX starts
    for devices, mesh, message in (("0", [], "--devices 0: plan for at least 1 device"),
                                   ("-4", [], "--devices -4: plan for at least 1 device"),
                                   ("4", ["--mesh", "data=3"], "does not fit 4 devices")):
        assert cli.main(["plan", "--config", "mae_demo", "--devices", devices, *mesh]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
