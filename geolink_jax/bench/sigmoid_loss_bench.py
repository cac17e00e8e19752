"""Per-device memory of the sigmoid loss (forward + backward) as the devices grow, dense vs blockwise (suite
`sigmoid`, issue 17).

    geolink-jax bench --only sigmoid [--config.sigmoid.batch=4096] [--config.sigmoid.dim=768]

For n = 1, 2, 4, 8 devices on the data axis (simulated CPU devices: memory is real, speed is not) and a global batch
B = n × `per_device` (weak scaling, as a pod grows), compiles the gradient of the loss on B normalised image/text
embeddings and reads XLA's per-device temporaries: dense (one B × B logits matrix that GSPMD partitions as it can:
B/n × B per device, growing with B) and blockwise (each device scores its images against the texts of every device
in turn, `nn/sigmoid_loss.py`: growing with B/n, so flat here). Targets: blockwise at 8 devices ≤ `flat_target` ×
blockwise at 2 (the smallest ring), and ≤ `target` × dense at 8.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from geolink_jax.nn.sigmoid_loss import sigmoid_loss, sigmoid_loss_blockwise  # noqa: E402
from geolink_jax.train import sharding  # noqa: E402


def temp_bytes(n, batch, dim):
    """(dense, blockwise) per-device temporaries of grad(loss) on n devices."""
    mesh = sharding.make_mesh(dict(data=n, fsdp=1, tensor=1), devices=jax.devices()[:n])
    x = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    sc = jax.ShapeDtypeStruct((), jnp.float32)
    out = []
    with jax.set_mesh(mesh):
        for fn in (sigmoid_loss, lambda a, c, s, b: sigmoid_loss_blockwise(a, c, s, b, mesh)):
            compiled = jax.jit(jax.grad(fn, argnums=(0, 1))).lower(x, x, sc, sc).compile()
            out.append(compiled.memory_analysis().temp_size_in_bytes)
    return out


def run(cfg):
    from geolink_jax.bench import rows

    row = rows.new_row("sigmoid", cfg.get("name") or f"sigmoid loss {cfg.per_device}/device D{cfg.dim} memory",
                       rows.flatten(cfg))
    m = row["metrics"]
    for n in cfg.device_counts:
        dense, block = temp_bytes(n, cfg.per_device * n, cfg.dim)
        m[f"dense_temp_bytes_{n}"] = dense
        m[f"blockwise_temp_bytes_{n}"] = block
    # one device has no ring (the loss is one block): the flatness is judged from the smallest ring on
    last, first = max(cfg.device_counts), min(n for n in cfg.device_counts if n > 1)
    m["device_count"] = jax.device_count()
    m["per_device"] = cfg.per_device
    rows.ratio(row, f"blockwise_{last}_over_{first}_devices", f"metrics.blockwise_temp_bytes_{last}",
               f"metrics.blockwise_temp_bytes_{first}", target=cfg.flat_target, op="<=")
    rows.ratio(row, f"blockwise_over_dense_{last}", f"metrics.blockwise_temp_bytes_{last}",
               f"metrics.dense_temp_bytes_{last}", target=cfg.target, op="<=")
    return row
