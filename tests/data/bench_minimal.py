"""The smallest sweep that runs every suite path of `geolink-jax bench` (tests/test_bench.py): demo-sized model,
two repeats, a 2-device memory run in a child process, the reference run without a checkout (skipped)."""

from geolink_jax.bench.sweep import chain, fixed
from geolink_jax.bench.sweeps import common


def get_config():
    c = common.base_config()
    for suite in ("step", "mask", "compile", "reference"):
        c[suite].update(config="demo", batch=2, repeats=2)
    c.mask.mask_ratios = [0.0, 0.75]
    c.mask.target_075 = 0.0  # the demo's 16-patch images are too small to judge the sparse-encoding target
    c.compile.update(batches=3, naive=False)
    c.preprocess.update(helsinki=False, repeats=1)
    c.memory.update(config="demo", batch=2, meshes=[[2, 1, 1], [1, 2, 1]], devices=2, target_factor=0.0)
    return c


def get_sweep():
    return chain(fixed(suite="step"), fixed(suite="mask"), fixed(suite="compile"), fixed(suite="preprocess"),
                 fixed(suite="memory"), fixed(suite="reference"))
