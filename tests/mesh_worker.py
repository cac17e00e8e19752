"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller, before jax starts).

    python tests/mesh_worker.py losses DATA_DIR "8,1,1;2,4,1" STEPS [CONFIG [key=value …]]
        → JSON {mesh: per-step losses, param specs}; key=value: config overrides (e.g. data.augment_on_device=True)
    python tests/mesh_worker.py save DATA_DIR 8,1,1 CKPT_DIR [CONFIG [key=value …]]     → saves the state after 2
        steps
    python tests/mesh_worker.py restore DATA_DIR 4,2,1 CKPT_DIR [CONFIG [key=value …]]  → JSON: max |restored −
        saved|, specs, the next step's loss
CONFIG: a named config (default demo); a first argument with '=' is an override, not a config.
"""

import json
import sys

import jax
import numpy as np

from geolink_jax import config as config_lib
from geolink_jax.train import sharding, trainer
from geolink_jax.train.checkpoint import Checkpointer


def setup(data_dir, mesh_shape, config_name="demo", overrides=()):
    config = config_lib.load([f"--config.{kv}" for kv in overrides], base=config_lib.load_file(config_name))
    config.data.path = data_dir
    config.batch_size = 8
    config.faithful_batch_groups = False  # compare meshes with the same (global) batch statistics
    if "vit" in config.model:
        config.model.vit.depth = 1
    data, fsdp, tensor = (int(x) for x in mesh_shape.split(","))
    config.mesh = dict(data=data, fsdp=fsdp, tensor=tensor)
    paths, manifest = trainer.prepare_data(config, None)
    config = trainer.resolve(config, manifest)
    mesh = sharding.make_mesh(config.mesh.to_dict(), devices=jax.devices()[:data * fsdp * tensor])
    s = trainer.Setup(config, mesh)
    it = iter(s.family.dataset(paths, manifest, config, s.model_cfg))
    return config, mesh, s, it


def run_steps(mesh, s, it, state, n):
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(n):
            host = next(it)
            host.pop("stats", None)
            state, metrics = s.step_fn(state, sharding.global_batch(host, mesh), jax.random.key(0))
            losses.append(float(metrics["loss"]))
    return state, losses


def main():
    mode, data_dir, mesh_shape = sys.argv[1:4]
    config_name = sys.argv[5] if len(sys.argv) > 5 else "demo"
    assert jax.device_count() == 8, jax.device_count()
    if mode == "losses":  # several meshes separated by ';'
        out = {}
        for shape in mesh_shape.split(";"):
            config, mesh, s, it = setup(data_dir, shape, config_name, sys.argv[6:])
            state = s.init_state()
            specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state["params"])})
            _, losses = run_steps(mesh, s, it, state, int(sys.argv[4]))
            out[shape] = dict(losses=losses, specs=specs)
        print(json.dumps(out))
        return
    rest = sys.argv[5:]
    name = rest.pop(0) if rest and "=" not in rest[0] else "demo"
    config, mesh, s, it = setup(data_dir, mesh_shape, name, rest)
    state = s.init_state()
    if mode == "save":
        state, _ = run_steps(mesh, s, it, state, 2)
        ckpt = Checkpointer(sys.argv[4], save_every=1)
        ckpt.save(2, state, it, config.to_json(), force=True)
        ckpt.close()
        np.savez(sys.argv[4] + "/reference.npz", *[np.asarray(x) for x in jax.tree.leaves(state)])
        print(json.dumps(dict(saved=2)))
    elif mode == "restore":
        ckpt = Checkpointer(sys.argv[4], save_every=1)
        restored = ckpt.restore(ckpt.latest_step(), s.abstract_state(), it)
        ref = np.load(sys.argv[4] + "/reference.npz")
        leaves = jax.tree.leaves(restored)
        diff = max(float(np.abs(np.asarray(x) - ref[f"arr_{i}"]).max()) for i, x in enumerate(leaves))
        specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(restored["params"])})
        step = int(restored["step"])
        # the restored iterator continues: one more step runs on the new mesh (it donates `restored`)
        _, losses = run_steps(mesh, s, it, restored, 1)
        print(json.dumps(dict(max_abs_diff=diff, step=step, specs=specs, next_loss=losses[0])))
        ckpt.close()


if __name__ == "__main__":
    main()
