"""The CPU suite: the real ViT-B model and the issue-6 targets that apply on a CPU host (~35 min on 2 cores).

    geolink-jax bench --suite cpu --reference-repo PATH
"""

from geolink_jax.bench.sweep import chain, fixed, product, sweep, zipped
from geolink_jax.bench.sweeps import common


def get_config():
    c = common.base_config()
    c.compile.update(config="demo", batches=6)
    c.step.repeats = 3
    return c


def get_sweep():
    return chain(
        product(fixed(suite="step"), sweep("batch", [1, 2, 4, 8])),
        product(fixed(suite="step", config="demo", batch=8), sweep("devices", [1, 2, 4, 8]),
                sweep("mesh.data", [-1])),
        fixed(suite="mask"),
        # batch 0 = the config's own (demo 4); ViT-B's own is the pod-scale 256, so 8 here
        product(fixed(suite="pipeline"), zipped(sweep("config", ["demo", "geolink_vit_b"]), sweep("batch", [0, 8]))),
        product(fixed(suite="input"), sweep("config", ["geolink_vit_b", "geolink_vit_l"]), sweep("workers", [0])),
        product(fixed(suite="input"), sweep("workers", [1, 2])),
        # every family on its bundled data, per image in its unit (issue 27): MAE; GAIR's photos as given (5 real of
        # a 32-photo budget), stored at 224 px raw, and stored with a full budget; DOFA-CLIP B/16 with online
        # teachers (cached ones skip the crop) and the bundled CLIP BPE (SigLIP's SentencePiece model is not here)
        fixed(suite="input", config="mae_vit_b"),
        product(fixed(suite="input", config="gair_vit_b"), zipped(
            sweep("preprocess_args", [[], ["--sv-size", "224", "--sv-format", "raw"],
                                      ["--sv-size", "224", "--sv-format", "raw"]]),
            sweep("overrides", [[], [], [["model.sv_budget", 5]]]))),
        fixed(suite="input", config="dofa_clip_b16:online",
              overrides=[["model.tokenizer", "clip_bpe"], ["model.text.vocab_size", 49408]]),
        fixed(suite="preprocess"),
        fixed(suite="memory"),
        # GAIR: the step of the demo (analytic FLOPs vs XLA, queue included) and the released size's memory per mesh
        product(fixed(suite="step", config="gair_demo"), sweep("batch", [4, 8])),
        product(fixed(suite="memory", config="gair_vit_b", meshes=[[8, 1, 1], [1, 8, 1], [2, 2, 2]]),
                sweep("overrides", [[], [["model.sv.remat", "full"], ["model.rs.remat", "full"]]])),
        fixed(suite="remat"),  # gair_vit_b, one patch of 32 photos: the step time remat costs, in one run
        fixed(suite="compile"),
        # DOFA-CLIP: the demo's step, compilations over band counts, the sigmoid loss's memory per device count,
        # the B/16 model's memory per mesh
        product(fixed(suite="step", config="dofa_clip_demo"), sweep("batch", [8, 16])),
        fixed(suite="compile", config="dofa_clip_demo", batches=8),
        fixed(suite="sigmoid"),
        fixed(suite="memory", config="dofa_clip_b16", batch=64, meshes=[[8, 1, 1], [1, 8, 1], [2, 2, 2]]),
        fixed(suite="reference"),
        fixed(suite="reference", config="demo", target=0.0),  # informative: the target is for ViT-B
    )
