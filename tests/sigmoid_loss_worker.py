"""Run with 8 simulated CPU devices: the blockwise sigmoid loss against the dense one (value and gradients) on
several meshes, and the per-device temporaries of both as devices and batch grow together. Prints one JSON line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from geolink_jax.nn.sigmoid_loss import sigmoid_loss, sigmoid_loss_blockwise
from geolink_jax.train import sharding


def normed(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def main():
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    out = {}
    for shape in ((8, 1, 1), (2, 4, 1), (1, 1, 1)):
        mesh = sharding.make_mesh(dict(data=shape[0], fsdp=shape[1], tensor=shape[2]),
                                  devices=jax.devices()[:int(np.prod(shape))])
        img = jnp.asarray(normed(rng.normal(size=(32, 16))), jnp.float32)
        txt = jnp.asarray(normed(img + 0.5 * rng.normal(size=(32, 16))), jnp.float32)
        s, b = jnp.float32(np.log(10.0)), jnp.float32(-10.0)
        dense = jax.value_and_grad(sigmoid_loss, argnums=(0, 1, 2, 3))(img, txt, s, b)
        batch = NamedSharding(mesh, P(("data", "fsdp")))
        with jax.set_mesh(mesh):
            f = jax.jit(jax.value_and_grad(lambda *a: sigmoid_loss_blockwise(*a, mesh), argnums=(0, 1, 2, 3)))
            block = f(jax.device_put(img, batch), jax.device_put(txt, batch), s, b)
        out["x".join(map(str, shape))] = dict(
            dense=float(dense[0]), blockwise=float(block[0]),
            grad_diff=max(float(jnp.abs(a - c).max()) for a, c in zip(dense[1], block[1])))
    temps = {}
    for n in (2, 4, 8):  # weak scaling: 256 pairs per device
        from geolink_jax.bench.sigmoid_loss_bench import temp_bytes

        temps[f"dense_{n}"], temps[f"blockwise_{n}"] = temp_bytes(n, 256 * n, 64)
    out["temp_bytes"] = temps
    print(json.dumps(out))


if __name__ == "__main__":
    main()
