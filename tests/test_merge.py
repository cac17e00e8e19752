"""Weight merging (`geolink-jax merge`, convert/merge.py): each method against its definition, frozen parameters
kept, bad inputs one line with nothing written. The end-to-end merge of a trained DOFA-CLIP run and its zero-shot
run are in tests/test_dofa_clip_data.py."""

import dataclasses
import zlib

import jax
import numpy as np
import pytest

from geolink_jax import family as family_lib
from geolink_jax.convert import merge
from geolink_jax.convert.params_store import Weights


def _tiny_dofa(width=32):
    from geolink_jax.dofa_clip import maka
    from geolink_jax.dofa_clip.model import DOFACLIPConfig
    from geolink_jax.dofa_clip.text import TextTowerConfig
    from geolink_jax.dofa_clip.towers import ImageTowerConfig

    return DOFACLIPConfig(
        image=ImageTowerConfig(width=width, depth=1, heads=4, mlp_dim=64, patch_size=8, image_size=32, taps=(-1,)),
        text=TextTowerConfig(vocab_size=50, context_length=8, width=32, depth=1, heads=4, mlp_dim=64, embed_dim=32),
        teachers=(maka.TeacherConfig("small", 9, 24),), band_buckets=(4,))


def _weights(cfg, seed, frozen_seed=0):
    """Random weights of `cfg`; the frozen Params (the locked text tower, teachers) drawn from `frozen_seed`."""
    frozen = merge.frozen_keys("dofa_clip", cfg)
    flat = jax.tree_util.tree_flatten_with_path(family_lib.abstract_params("dofa_clip", cfg))[0]
    out = {}
    for path, leaf in flat:
        key = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        rng = np.random.default_rng(zlib.crc32(repr((key, frozen_seed if key in frozen else seed)).encode()))
        out[key] = rng.normal(size=leaf.shape).astype(leaf.dtype)
    from flax import traverse_util

    return Weights("dofa_clip", traverse_util.unflatten_dict(out), cfg)


def test_each_method_is_its_definition():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 5)).astype(np.float32)
    values = rng.normal(size=(3, 3, 5)).astype(np.float32)
    mean = merge.merge_tensor("average", values, None, None, 1.0, 0.2)
    np.testing.assert_allclose(mean, values.mean(0), rtol=1e-6)
    same = np.stack([values[0], values[0]])
    assert np.array_equal(merge.merge_tensor("average", same, None, None, 1.0, 0.2), values[0])  # bit-exact
    assert np.array_equal(merge.merge_tensor("task_arithmetic", values, base, None, 0.0, 0.2), base)
    np.testing.assert_allclose(merge.merge_tensor("task_arithmetic", values[:1], base, None, 1.0, 0.2), values[0],
                               rtol=1e-6, atol=1e-6)
    # progressive: the sequence of pairwise interpolations it names
    c = [0.3, 0.6, 0.5]
    expected = base
    for coef, v in zip(c, values):
        expected = (1 - coef) * expected + coef * v
    np.testing.assert_allclose(merge.merge_tensor("progressive", values, base, c, 1.0, 0.2), expected, rtol=1e-6)
    # equal default coefficients without a base: the running mean, i.e. the uniform soup
    np.testing.assert_allclose(merge.merge_tensor("progressive", values, None, None, 1.0, 0.2), values.mean(0),
                               rtol=1e-5, atol=1e-6)


def test_ties_on_a_hand_built_example():
    """Task vectors of 4 elements, density 0.5 (2 kept each): trim, elect the sign of the sum, mean of agreeing."""
    tv = np.array([[3.0, -1.0, 0.5, -4.0],    # keeps 3, -4
                   [2.0, 0.1, -2.5, 1.0],     # keeps 2, -2.5
                   [-1.0, 0.2, 0.3, 5.0]])    # keeps -1, 5
    # element 0: 3, 2, -1 → sum 4 > 0 → mean of (3, 2) = 2.5; element 1: nothing kept → 0; element 2: -2.5 → -2.5;
    # element 3: -4, 5 → sum 1 > 0 → 5
    np.testing.assert_allclose(merge.ties_vector(tv, 0.5), [2.5, 0.0, -2.5, 5.0])
    base = np.ones(4, np.float32)
    np.testing.assert_allclose(merge.merge_tensor("ties", (base + tv).astype(np.float32), base, None, 0.5, 0.5),
                               base + 0.5 * np.array([2.5, 0.0, -2.5, 5.0]), rtol=1e-6)


def test_frozen_parameters_are_kept_and_must_agree():
    cfg = _tiny_dofa()
    a, b = _weights(cfg, 1), _weights(cfg, 2)
    merged, counts = merge.merge("average", [a, b], names=["a", "b"])
    assert counts["frozen"] > 0 and counts["merged"] > 0
    from flax import traverse_util

    flat_a, flat_b, flat_m = (traverse_util.flatten_dict(x) for x in (a.params, b.params, merged))
    frozen = merge.frozen_keys("dofa_clip", cfg)
    for key in flat_m:
        if key in frozen:
            assert np.array_equal(flat_m[key], flat_a[key])
        else:
            np.testing.assert_allclose(flat_m[key], (flat_a[key] + flat_b[key]) / 2, rtol=1e-6, atol=1e-7)
    with pytest.raises(merge.MergeError, match="^c: its frozen parameter .* differs from the reference's"):
        merge.merge("average", [a, _weights(cfg, 3, frozen_seed=1)], names=["a", "c"])


@pytest.mark.parametrize("case, message", [
    ("family", "^b: a geolink model, a a dofa_clip model: one family per merge"),
    ("config", r"^b: its model config differs from a's \(image.width"),
    ("nan", r"^b: non-finite values \(NaN/Inf\) in "),
    ("no_base", r"^--method task_arithmetic merges task vectors \(model − base\): give --base"),
    ("coefficients", "^--coefficients: 3 given; --method average with 2 models takes 2"),
])
def test_bad_inputs_are_one_line(case, message):
    cfg = _tiny_dofa()
    a, b = _weights(cfg, 1), _weights(cfg, 2)
    method, coefficients = "average", None
    if case == "family":
        b = dataclasses.replace(b, family="geolink") if dataclasses.is_dataclass(b) else b._replace(family="geolink")
    elif case == "config":
        b = _weights(_tiny_dofa(width=64), 2)
    elif case == "nan":
        leaf = next(iter(jax.tree.leaves(b.params)))
        leaf.flat[0] = np.nan
    elif case == "no_base":
        method = "task_arithmetic"
    elif case == "coefficients":
        coefficients = [0.2, 0.3, 0.5]
    with pytest.raises(merge.MergeError, match=message):
        merge.merge(method, [a, b], None, coefficients, names=["a", "b"])


def test_cli_merge_writes_nothing_on_bad_input(tmp_path, capsys):
    from geolink_jax import cli
    from geolink_jax.convert import params_store

    cfg = _tiny_dofa()
    for name, seed in (("a", 1), ("b", 2)):
        w = _weights(cfg, seed)
        params_store.save_params(tmp_path / name, w.params, w.config)
    rc = cli.main(["merge", "--models", str(tmp_path / "a"), str(tmp_path / "b"), "--method", "ties",
                   "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "give --base" in err and not (tmp_path / "m").exists()
    assert cli.main(["merge", "--models", str(tmp_path / "a"), str(tmp_path / "b"), "--base", str(tmp_path / "a"),
                     "--method", "task_arithmetic", "--scale", "0", "--out", str(tmp_path / "m")]) == 0
    merged = params_store.load_params(tmp_path / "m")  # scale 0: the base, every tensor
    base = params_store.load_params(tmp_path / "a")
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(merged.params), jax.tree.leaves(base.params)))
    import json

    record = json.loads((tmp_path / "m" / "merge.json").read_text())
    assert [i["role"] for i in record["inputs"]] == ["base", "model", "model"]
    assert record["inputs"][0]["fingerprint"] == record["inputs"][1]["fingerprint"] == record["fingerprint"]


@pytest.mark.parametrize("method, with_base, coefficients", [
    ("average", False, None), ("average", False, [0.7, 0.2, 0.1]), ("task_arithmetic", True, [1.0, 0.5, 0.25]),
    ("ties", True, None), ("progressive", False, None), ("progressive", True, [0.5, 0.3, 0.2])])
def test_the_streamed_merge_is_the_definition_on_every_tensor(method, with_base, coefficients):
    """`merge` loads one input at a time (lazy loaders, TIES twice); per tensor it equals `merge_tensor`."""
    from flax import traverse_util

    cfg = _tiny_dofa()
    models = [_weights(cfg, s) for s in (1, 2, 3)]
    base = _weights(cfg, 9) if with_base else None
    loads = []
    loaders = [lambda w=w, i=i: loads.append(i) or w for i, w in enumerate(models)]
    merged, counts = merge.merge(method, loaders, base, coefficients, scale=0.8, density=0.3)
    assert loads == ([0, 1, 2, 0, 1, 2] if method == "ties" else [0, 1, 2])
    frozen = merge.frozen_keys("dofa_clip", cfg)
    flats = [traverse_util.flatten_dict(w.params) for w in models]
    flat_base = traverse_util.flatten_dict(base.params) if base else None
    for key, value in traverse_util.flatten_dict(merged).items():
        if key in frozen:
            continue
        expected = merge.merge_tensor(method, np.stack([f[key] for f in flats]).astype(np.float32),
                                      flat_base[key] if base else None, coefficients, 0.8, 0.3)
        np.testing.assert_allclose(value, expected, rtol=2e-5, atol=2e-6, err_msg=str(key))


@pytest.mark.slow
def test_merge_on_a_mesh_restores_sharded_and_equals_the_host_merge(tmp_path):
    """`--mesh fsdp=8`: the inputs are restored into their shards (FSDP-split arrays, no whole host copy) and the
    merged weights equal the host merge's (task arithmetic; TIES with its per-tensor trim). In an 8-device process
    of its own, not the shared test server: its many eager collectives once starved a rendezvous past XLA:CPU's
    40 s there, which took every other 8-device test down with it."""
    import json
    import pathlib
    import subprocess
    import sys

    from conftest import EIGHT_DEVICES_ENV

    from geolink_jax.convert import params_store

    cfg = _tiny_dofa()
    for name, seed in (("base", 9), ("a", 1), ("b", 2)):
        w = _weights(cfg, seed)
        params_store.save_params(tmp_path / name, w.params, w.config)
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", "import json, sys, scenarios; "
                           "print(json.dumps(scenarios.merge_on_mesh(sys.argv[1])))", str(tmp_path)],
                          capture_output=True, text=True, timeout=900, cwd=root,
                          env=dict(EIGHT_DEVICES_ENV, PYTHONPATH=f"{root}:{root / 'tests'}"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["sharded"] is True
    assert out["task_arithmetic"] < 1e-6 and out["ties"] < 1e-6, out
    # written from 8 devices' shards, read here on one: embed, zeroshot and convert export take it as is
    on_mesh = params_store.load_params(tmp_path / "ties_mesh")
    host = params_store.load_params(tmp_path / "ties_host")
    assert jax.device_count() < 8 and on_mesh.family == "dofa_clip"
    for x, y in zip(jax.tree.leaves(on_mesh.params), jax.tree.leaves(host.params)):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=1e-6)
