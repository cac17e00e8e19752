import json
import os
import pathlib
import tempfile

import pyproj
import pytest

from geolink_jax import samples
from geolink_jax.osm import geometry
from geolink_jax.tiles import sources as tile_sources


def load_sample_layers(name):
    """Cleaned layers + bbox of one bundled OSM tile."""
    folder = samples.OSM_TILES_DIR / name
    with open(folder / f"{name}.json") as f:
        bbox = tuple(json.load(f)["bbox_west_south_east_north"])
    geoms, labels, sources, _ = tile_sources.read_vectors(sorted(folder.glob("*.geojson")), pyproj.CRS("EPSG:4326"))
    layers, problems = geometry.clean_features(geoms, labels, sources, bbox)
    assert problems == []
    return layers, bbox


@pytest.fixture(scope="session")
def helsinki_features():
    from geolink_jax.osm import pbf as osm_pbf

    return osm_pbf.load(str(samples.helsinki_pbf()))


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


# Environment for the test subprocesses that train (pretrain CLI runs, mesh workers): XLA's persistent compilation
# cache, so that a rerun of the same program (a resume, a second run of a scenario) loads its executable instead of
# compiling it again (the demo step takes ~45 s to compile on 2 cores). Not for runs that count compilations.
SUBPROCESS_ENV = dict(
    os.environ, PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[1]),
    JAX_COMPILATION_CACHE_DIR=str(pathlib.Path(tempfile.gettempdir()) / "geolink_jax_tests_xla_cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="1", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
EIGHT_DEVICES_ENV = dict(SUBPROCESS_ENV, XLA_FLAGS="--xla_force_host_platform_device_count=8")


def mesh_worker(*args, timeout=900):
    """tests/mesh_worker.py in a subprocess with 8 simulated devices → its last output line as JSON."""
    import json
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "tests" / "mesh_worker.py"), *args], env=EIGHT_DEVICES_ENV,
                         cwd=root, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
