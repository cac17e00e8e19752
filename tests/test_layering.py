"""The package's layering (tests/layering.py): the real tree obeys it, and each kind of violation is caught when
planted in a copy of the tree."""

import pathlib
import shutil
import subprocess
import sys

import layering
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_package_obeys_its_layering():
    _, packages, problems = layering.analyse()
    assert problems == []
    # the families are leaves of the graph: no shared package imports one
    for pkg, targets in packages.items():
        if pkg not in layering.FAMILIES:
            assert not targets & set(layering.FAMILIES), (pkg, targets)


def test_the_import_graph_prints():
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "layering.py")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "package import graph" in out.stdout and "0 violation(s)" in out.stdout
    assert any(line.split()[:2] == ["nn", "→"] for line in out.stdout.splitlines())


PLANTED = {
    "shared imports a family": ("train/planted.py", "from geolink_jax.gair import model\n",
                                "shared package train imports family gair"),
    "family imports a family": ("dofa_clip/planted.py", "from geolink_jax.gair.convert import gair_name\n",
                                "family dofa_clip imports family gair"),
    "private name across packages": ("gair/planted.py", "from geolink_jax.tiles.job import _encoder\n",
                                     "imports the private name geolink_jax.tiles.job._encoder"),
    "private attribute across packages": ("gair/planted.py", "from geolink_jax.tiles import job\nx = job._encoder\n",
                                          "reaches the private name geolink_jax.tiles.job._encoder"),
    "model code imports train": ("nn/planted.py", "def f():\n    from geolink_jax.train import sharding\n",
                                 "nn may not import train"),
    "import cycle": ("dofa_clip/planted.py", "from geolink_jax.dofa_clip import family\n",
                     "import cycle: geolink_jax.dofa_clip.family → geolink_jax.dofa_clip.planted"),
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_a_planted_violation_is_caught(tmp_path, kind):
    tree = tmp_path / "geolink_jax"
    shutil.copytree(ROOT / "geolink_jax", tree, ignore=shutil.ignore_patterns("sample_data", "__pycache__"))
    where, code, expected = PLANTED[kind]
    (tree / where).write_text(code)
    if kind == "import cycle":  # the family module imports the planted one, which imports it back
        family = tree / "dofa_clip" / "family.py"
        family.write_text(family.read_text() + "\nfrom geolink_jax.dofa_clip import planted  # noqa\n")
    _, _, problems = layering.analyse(tree)
    assert any(expected in p for p in problems), problems
