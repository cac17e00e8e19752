"""A real multi-process run: 2 processes on localhost (jax.distributed, gloo CPU collectives, 4 simulated devices
each, one global mesh of 8) train the demo, are stopped by a SIGTERM to one of them (both save the same step and
exit 143), and resume with 2 processes, or with 1 process on 8 devices, with the losses of a 1-process run. Each
process reads only its rows of every global batch (the record reads are logged by tests/process_worker.py)."""
import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import SUBPROCESS_ENV, TEST_XLA_FLAGS

STEPS = 12
ROOT_ENV = dict(SUBPROCESS_ENV)  # with the persistent compilation cache: a resumed process may load its step while
#                                  the other compiles it, the skew the trainer's compile barrier absorbs


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir, data_dir, processes, devices):
    """`processes` pretrain processes on one workdir → [Popen]; process i logs its record reads to reads<i>."""
    port, procs = _free_port(), []
    for i in range(processes):
        extra = [f"--config.process.coordinator=localhost:{port}", f"--config.process.count={processes}",
                 f"--config.process.index={i}"] if processes > 1 else []
        cmd = [sys.executable, "tests/process_worker.py", str(workdir.parent / f"{workdir.name}.reads{i}"),
               "pretrain", "--config", "demo", "--workdir", str(workdir), "--no-progress",
               f"--config.data.path={data_dir}", f"--config.total_steps={STEPS}", "--config.log_every=1",
               # no periodic saves: the SIGTERM save is the resume point (each save of 8 simulated devices costs ~2 s)
               "--config.checkpoint_every=100", "--config.model.vit.depth=1", "--config.pictures=False",
               "--config.batch_size=8", "--config.data.read_threads=0", *extra]  # 0: no read-ahead to log
        env = dict(ROOT_ENV, XLA_FLAGS=f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}")
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT_ENV["PYTHONPATH"], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return procs


def _finish(procs, timeout=900):
    outs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], outs


def _losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows}), "one row per step"
    return {r["step"]: r["loss"] for r in rows}


def _reads(workdir, i):
    return [int(x) for x in (workdir.parent / f"{workdir.name}.reads{i}").read_text().split()]


def _checkpoints(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_two_processes_stop_together_and_resume_on_any_process_count(data_dir, tmp_path):
    ref = tmp_path / "one"
    codes, outs = _finish(_start(ref, data_dir, 1, 8))
    assert codes == [0], outs[0][-3000:]
    expected = _losses(ref)
    assert sorted(expected) == list(range(1, STEPS + 1))

    two = tmp_path / "two"
    procs = _start(two, data_dir, 2, 4)
    deadline = time.time() + 900
    while not ((two / "metrics.jsonl").exists() and len((two / "metrics.jsonl").read_text().splitlines()) >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.poll() for p in procs]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)  # one process is preempted: both must save and stop at the same step
    codes, outs = _finish(procs)
    assert codes == [143, 143], [o[-2000:] for o in outs]
    stop = _checkpoints(two)[-1]
    assert 2 <= stop < STEPS
    data_files = sorted(p.name for p in (two / "checkpoints" / str(stop) / "data").glob("process_*.json"))
    assert data_files == ["process_0-of-2.json", "process_1-of-2.json"]
    got = _losses(two)
    assert max(got) == stop
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(got)], rtol=1e-5)

    # each process read only its rows of every global batch: stacked in process order they are the 1-process reads
    one_reads, halves = _reads(ref, 0), [_reads(two, i) for i in range(2)]
    assert [len(h) for h in halves] == [4 * stop] * 2
    for step in range(stop):
        assert halves[0][4 * step:4 * step + 4] + halves[1][4 * step:4 * step + 4] == one_reads[8 * step:8 * step + 8]

    single = tmp_path / "single"
    shutil.copytree(two, single)
    codes, outs = _finish(_start(two, data_dir, 2, 4))  # resume with 2 processes
    assert codes == [0, 0], [o[-2000:] for o in outs]
    codes, outs = _finish(_start(single, data_dir, 1, 8))  # resume with 1 process on 8 devices
    assert codes == [0], outs[0][-3000:]
    for workdir in (two, single):
        got = _losses(workdir)
        assert sorted(got) == list(range(1, STEPS + 1))
        np.testing.assert_allclose([got[s] for s in range(1, STEPS + 1)],
                                   [expected[s] for s in range(1, STEPS + 1)], rtol=1e-5)
