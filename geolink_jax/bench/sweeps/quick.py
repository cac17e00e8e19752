"""The quick suite: every benchmark once on the demo-sized model, ~9 minutes on a 2-core CPU.

    geolink-jax bench --suite quick [--reference-repo PATH]
"""

from geolink_jax.bench.sweep import chain, fixed, product, sweep
from geolink_jax.bench.sweeps import common


def get_config():
    c = common.base_config()
    for suite in ("step", "mask", "compile", "reference"):
        c[suite].config = "demo"
    c.pipeline.update(batches=20, repeats=10)
    c.preprocess.update(helsinki=False, repeats=2)
    c.memory.update(config="demo", target_factor=0.0)  # the demo model is mostly small replicated arrays
    c.compile.update(batches=4)
    c.remat.update(config="gair_demo", batch=2, policies=["none", "full"])
    # demo-sized runs on 2 cores (the last quick sweep: 9 runs in 9 min 11 s)
    for suite, est in dict(step=45, mask=60, remat=60, pipeline=40, preprocess=30, memory=60, compile=120,
                           reference=60).items():
        c[suite].est_s = float(est)
    # the targets are for ViT-B (suite cpu); at demo size (16 patches, overhead-bound) the ratios are informative
    c.reference.target = 0.0
    c.mask.target_075 = 0.0
    return c


def get_sweep():
    return chain(
        product(fixed(suite="step"), sweep("batch", [2, 4, 8])),
        fixed(suite="mask"),
        fixed(suite="remat"),  # GAIR's towers with and without remat: step time and temporaries
        fixed(suite="pipeline"),
        fixed(suite="input"),
        fixed(suite="preprocess"),
        fixed(suite="memory"),
        fixed(suite="compile"),
        # DOFA-CLIP: the demo's step and the sigmoid loss's memory per device count (its compilations over band
        # counts: the cpu sweep)
        product(fixed(suite="step", config="dofa_clip_demo"), sweep("batch", [8])),
        fixed(suite="sigmoid"),
        fixed(suite="reference"),
    )
