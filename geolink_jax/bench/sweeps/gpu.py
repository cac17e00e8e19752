"""The GPU suite: ViT-B and ViT-L GeoLink steps in bf16 with cuDNN attention, MFU against the device's peak.

    geolink-jax bench --suite gpu [--reference-repo PATH]

On a GPU backend the runner applies the recommended setting unless told not to (--no-recommended):
jax_optimization_level O1 (latency-hiding scheduler, collective pipelining, the SOL latency estimator on Hopper).
Every row records it with XLA_FLAGS. cuDNN attention needs bf16/fp16 and head dim ≤ 256 (ViT-B/L: 64).
"""

from geolink_jax.bench.sweep import chain, fixed, product, sweep
from geolink_jax.bench.sweeps import common


def get_config():
    c = common.base_config()
    for suite in ("step", "mask", "reference"):
        c[suite].update(dtype="bfloat16", attention_impl="cudnn", repeats=20)
    c.step.mfu_target = 0.45
    c.mask.batch = 64
    c.pipeline.update(batches=50, repeats=50)
    return c


def get_sweep():
    return chain(
        product(fixed(suite="step", config="geolink_vit_b"), sweep("batch", [32, 64, 128, 256])),
        product(fixed(suite="step", config="geolink_vit_l"), sweep("batch", [16, 32, 64, 128])),
        product(fixed(suite="step", config="geolink_vit_l", batch=64), sweep("attention_impl", ["xla", "cudnn"])),
        product(fixed(suite="step", config="geolink_vit_l", batch=64), sweep("dtype", ["float32"]),
                sweep("attention_impl", ["xla"])),
        fixed(suite="mask"),
        product(fixed(suite="pipeline"), sweep("config", ["demo", "geolink_vit_b"]), sweep("batch", [0])),
        fixed(suite="compile"),
        product(fixed(suite="reference", batch=32)),
    )
