import json
import os
import pathlib
import tempfile

# Every test process (this one, its xdist workers, the CLI and mesh processes it starts) compiles with LLVM's
# optimisations off: XLA:CPU compiles the demo step in about half the time (the same HLO programs; the tests compare
# values at their stated tolerances, speed only as ratios of the host's own work). Set before JAX starts a backend.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
# XLA's persistent compilation cache, shared by every process of the run: a program compiled once (a resume, the
# same tiny model in two test files, a mesh scenario run twice) is loaded, not compiled again. Tests that count
# compilations count traces or jit cache entries, which the cache does not change; the bench's compile suite runs
# in its own process without it.
XLA_CACHE_DIR = str(pathlib.Path(tempfile.gettempdir()) / "geolink_jax_tests_xla_cache")

import pyproj  # noqa: E402 - after the XLA flags
import pytest  # noqa: E402

from geolink_jax import samples  # noqa: E402
from geolink_jax.osm import geometry  # noqa: E402
from geolink_jax.tiles import sources as tile_sources  # noqa: E402


def load_sample_layers(name):
    """Cleaned layers + bbox of one bundled OSM tile."""
    folder = samples.OSM_TILES_DIR / name
    with open(folder / f"{name}.json") as f:
        bbox = tuple(json.load(f)["bbox_west_south_east_north"])
    geoms, labels, sources, _ = tile_sources.read_vectors(sorted(folder.glob("*.geojson")), pyproj.CRS("EPSG:4326"))
    layers, problems = geometry.clean_features(geoms, labels, sources, bbox)
    assert problems == []
    return layers, bbox


def _parse_pbf(path):
    from geolink_jax.osm import pbf as osm_pbf

    return osm_pbf.load(path)


@pytest.fixture(scope="session")
def helsinki_features():
    """The real Helsinki extract's features, parsed in a fresh process (under 1 s there; inside a test worker that
    has run JAX tests it took up to 100 s) and sent back pickled."""
    import concurrent.futures
    import multiprocessing

    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_parse_pbf, str(samples.helsinki_pbf())).result()


def helsinki_layers(features, bbox):
    """Cleaned layers of a tile cut from the real Helsinki extract."""
    geoms, labels = features.query(bbox)
    layers, _ = geometry.clean_features(geoms, labels, ["Helsinki.osm.pbf"] * len(geoms), bbox)
    return layers


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The bundled sample tiles preprocessed with 64-d hash tag features (no model download), as a str path."""
    from geolink_jax.tiles import job as preprocess

    out = tmp_path_factory.mktemp("tiles_hash64")
    preprocess.run_local(tile_sources.discover_tiles(samples.OSM_TILES_DIR), out,
                         preprocess.PreprocessConfig(encoder="hash:64"), workers=1, progress=False)
    return str(out)


@pytest.fixture(scope="session")
def ufz_shards(tmp_path_factory):
    """The bundled UFZ tiles (official graphs, real 224 px PNG images) as shards (512-d hash features): a
    pathlib.Path to the shard directory."""
    from geolink_jax.tiles import job as preprocess

    out = tmp_path_factory.mktemp("ufz_shards")
    preprocess.run_local(tile_sources.discover_tiles(samples.UFZ_DIR), out,
                         preprocess.PreprocessConfig(encoder="hash:512"), workers=1, progress=False)
    return out


# Environment for the test subprocesses that train (pretrain CLI runs, the 8-device server): the persistent
# compilation cache (the demo step takes ~20 s to compile on 2 cores). Not for runs that count backend compilations.
SUBPROCESS_ENV = dict(
    os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]), JAX_COMPILATION_CACHE_DIR=XLA_CACHE_DIR,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
EIGHT_DEVICES_ENV = dict(SUBPROCESS_ENV, XLA_FLAGS=f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=8")


def pytest_collection_modifyitems(config, items):
    """A test that runs scenarios in the 8-device server is slow (it starts the server, then compiles on meshes).
    Slow tests run first (a stable sort): the xdist workers then finish together instead of one of them running a
    minutes-long test at the end while the other idles."""
    for item in items:
        if "eight_devices" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config):
    """The persistent compilation cache in this process too (see XLA_CACHE_DIR)."""
    import jax

    jax.config.update("jax_compilation_cache_dir", XLA_CACHE_DIR)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pretrain_cmd(workdir, data_dir, steps, *extra, config=None):
    """The pretraining CLI in a fresh process, as the reliability, resume and baseline runs start it: the GeoLink
    demo (a config file) at depth 1, bf16 compute, a metrics row every step, a checkpoint every 2 (3 kept)."""
    import sys

    config = config or str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")
    return [sys.executable, "-m", "geolink_jax.cli", "pretrain", "--config", config,
            "--workdir", str(workdir), "--no-progress", f"--config.data.path={data_dir}",
            f"--config.total_steps={steps}", "--config.log_every=1", "--config.checkpoint_every=2",
            "--config.keep_checkpoints=3", "--config.model.vit.depth=1", "--config.model.dtype=bfloat16", *extra]


BASELINE_STEPS = 8


@pytest.fixture(scope="session")
def baseline_run(data_dir, tmp_path_factory):
    """One uninterrupted `pretrain_cmd` run of BASELINE_STEPS steps (pictures on), shared by the tests that compare
    an interrupted, damaged or resumed run with it (they copy its workdir, never change it): a pathlib.Path. Its
    tests share the xdist group "baseline", so one worker makes it once."""
    import subprocess

    workdir = tmp_path_factory.mktemp("baseline") / "w"
    out = subprocess.run(pretrain_cmd(workdir, data_dir, BASELINE_STEPS), capture_output=True, text=True,
                         timeout=900, env=SUBPROCESS_ENV, cwd=pathlib.Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


class DeviceServer:
    """Client of tests/device_server.py: `server("module:function", *args)` runs that function in the 8-device
    process and returns its JSON result; a scenario's exception fails the calling test with its traceback."""

    def __init__(self, log_path):
        import subprocess
        import sys

        root = pathlib.Path(__file__).resolve().parents[1]
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(root / "tests" / "device_server.py")], env=dict(
            EIGHT_DEVICES_ENV, PYTHONPATH=f"{root}:{root / 'tests'}"), cwd=root, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        assert self._reply(300) == "ready"

    def _reply(self, timeout):
        import json
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                self.proc.kill()
                pytest.fail(f"the 8-device server gave no reply in {timeout} s; its log: {self._log_tail()}")
        line = self.proc.stdout.readline()
        if not line:
            pytest.fail(f"the 8-device server exited ({self.proc.poll()}); its log: {self._log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            pytest.fail(f"in the 8-device server:\n{reply['error']}")
        return reply["result"]

    def _log_tail(self):
        self.log.flush()
        return pathlib.Path(self.log_path).read_text()[-3000:]

    def __call__(self, call, *args, timeout=900):
        import json

        assert self.proc.poll() is None, f"the 8-device server is gone; its log: {self._log_tail()}"
        self.proc.stdin.write(json.dumps({"call": call, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        return self._reply(timeout)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def eight_devices(tmp_path_factory):
    """The 8-device server of this test run (see tests/device_server.py). Tests that use it are marked
    `xdist_group("eight_devices")` so that one xdist worker starts it."""
    server = DeviceServer(tmp_path_factory.mktemp("device_server") / "log.txt")
    yield server
    server.close()
