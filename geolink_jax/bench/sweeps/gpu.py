"""The GPU suite: one short run for the first H100/H200 (≤ 8 minutes, compile included; the estimate is printed
before it starts and a 480 s budget stops it). ViT-L GeoLink bf16 step and MFU (target ≥ 45%), cuDNN vs XLA
attention, GAIR's step (gair_vit_b, 8 patches × 32 photos) without and with remat (time and temporaries), one
DOFA-CLIP (B/16, 256 pairs) step, the official
PyTorch step side by side when a checkout is given, and the input pipeline's host cost and rate with 15 grain
workers (a 16-core host).

    geolink-jax bench --suite gpu [--reference-repo PATH] --out out/bench_gpu

On a GPU backend the runner applies the recommended setting unless told not to (--no-recommended):
jax_optimization_level O1 (latency-hiding scheduler, collective pipelining, the SOL latency estimator on Hopper).
Every row records it with XLA_FLAGS. cuDNN attention needs bf16/fp16 and head dim ≤ 256 (ViT-L: 64).
"""

from geolink_jax.bench.sweep import chain, fixed, product, sweep
from geolink_jax.bench.sweeps import common

BUDGET_S = 480.0


def get_config():
    c = common.base_config()
    c.budget_s = BUDGET_S
    for suite in ("step", "reference"):
        c[suite].update(config="geolink_vit_l", dtype="bfloat16", attention_impl="cudnn", repeats=20)
    c.step.mfu_target = 0.45
    # H100 estimates: child start + JAX import ~10 s, ViT-L step compile ~30-40 s, 20 timed steps ~3 s
    c.step.est_s = 60.0
    c.reference.update(batch=32, est_s=120.0)  # + the PyTorch model build and its warm-up steps
    c.input.update(config="geolink_vit_l", workers=15, threads=1, batches=10, rounds=2, est_s=90.0)
    return c


def get_sweep():
    return chain(
        product(fixed(suite="step"), sweep("batch", [64])),
        product(fixed(suite="step", batch=64), sweep("attention_impl", ["xla"])),
        # every family measured on the first GPU. GAIR: its step without and with remat of both towers (time and
        # temporaries: on XLA:CPU remat does not lower them, benchmarks/RESULTS.md, issue 27); its SV tower takes
        # fused attention only without its attention dropout (a named deviation), so the XLA path. DOFA-CLIP with
        # the bundled CLIP BPE (no SentencePiece model here)
        fixed(suite="remat", config="gair_vit_b", batch=8, dtype="bfloat16", attention_impl="xla", repeats=5,
              policies=["none", "full"], est_s=90.0),
        fixed(suite="step", config="dofa_clip_b16", batch=256, mfu_target=0.0,
              overrides=[["model.tokenizer", "clip_bpe"], ["model.text.vocab_size", 49408]]),
        fixed(suite="input"),
        fixed(suite="reference"),
    )
