"""Run in a subprocess with 8 simulated CPU devices: the compile-only planner's checks (tests/test_plan.py).

    python tests/plan_worker.py → JSON {memory, fsdp, suggest}
"""

import json
import math

import jax

from geolink_jax.bench import memory_bench
from geolink_jax.train import plan, sharding, trainer


def memory():
    """The plan's per-device state bytes vs the memory bench's (argument bytes − batch) for the same step."""
    measured = plan.compile_step(plan.run_config("mae_demo", dict(data=1, fsdp=8, tensor=1), batch=8))
    bench = memory_bench.measure("mae_demo", (1, 8, 1), 8)
    m = measured["memory"]
    return dict(plan_state=m["params"] + m["optimizer"] + m["other_state"], plan_peak=m["peak"],
                plan_arguments=m["arguments"], bench_state=bench["state_bytes_compiled"],
                bench_shardings=bench["state_bytes_shardings"])


def fsdp():
    """Pure FSDP over 8 devices (fp32, a width where the weights dominate): collective bytes vs the analytic count."""
    overrides = ["--config.model.dtype=float32", "--config.model.vit.width=256", "--config.model.vit.num_heads=4",
                 "--config.model.vit.depth=2"]
    config = plan.run_config("mae_demo", dict(data=1, fsdp=8, tensor=1), batch=8, overrides=overrides)
    measured = plan.compile_step(config)
    params = trainer.Setup(config, sharding.make_mesh(config.mesh.to_dict())).abstract_state()["params"]
    sharded = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(params) if "fsdp" in str(x.sharding.spec))
    replicated = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(params)) - sharded
    return dict(collectives=measured["collectives"], sharded_bytes=sharded, replicated_bytes=replicated)


def suggest():
    """A chip whose memory holds the FSDP-8 plan but not the data-parallel one: flagged, and the suggestion fits."""
    dp = plan.compile_step(plan.run_config("mae_demo", dict(data=8, fsdp=1, tensor=1), batch=16))
    f8 = plan.compile_step(plan.run_config("mae_demo", dict(data=1, fsdp=8, tensor=1), batch=16))
    hbm = (dp["memory"]["peak"] + f8["memory"]["peak"]) / 2 / plan.HEADROOM
    chip = plan.Chip("small", 1e12, 1e12, hbm, 1e11, 1e10, 0, 0.0, "test")
    mesh, cand = plan.suggest_fsdp("mae_demo", 8, chip, batch=16, measured=dp)
    return dict(dp_fits=plan.roofline(dp, chip)["fits"], f8_fits=plan.roofline(f8, chip)["fits"], mesh=mesh,
                suggested_peak=cand["memory"]["peak"] if cand else None, limit=plan.HEADROOM * hbm)


if __name__ == "__main__":
    plan.ensure_devices(8)
    print(json.dumps(dict(memory=memory(), fsdp=fsdp(), suggest=suggest())))
