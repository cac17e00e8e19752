"""Mesh scenarios, run in the 8-device server (tests/device_server.py, the `eight_devices` fixture):

    losses(DATA_DIR, "8,1,1;2,4,1", STEPS, CONFIG, *overrides) → {mesh: per-step losses, param specs}
    save(DATA_DIR, "8,1,1", CKPT_DIR, CONFIG, *overrides)      → saves the state after 2 steps
    restore(DATA_DIR, "4,2,1", CKPT_DIR, CONFIG, *overrides)   → max |restored − saved|, specs, the next step's loss
CONFIG: a named config; overrides: key=value config fields (e.g. data.augment_on_device=True).
"""

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


def losses(data_dir, meshes, steps, config_name, *overrides):
    """Per-step losses and parameter specs of `steps` steps on each mesh of `meshes` ("d,f,t;d,f,t")."""
    out = {}
    for shape in meshes.split(";"):
        config, mesh, s, it = setup(data_dir, shape, config_name, overrides)
        state = s.init_state()
        specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state["params"])})
        _, run = run_steps(mesh, s, it, state, int(steps))
        out[shape] = dict(losses=run, specs=specs)
    return out


def save(data_dir, mesh_shape, ckpt_dir, config_name, *overrides):
    """The state after 2 steps, checkpointed (with the data iterator) and as reference.npz."""
    config, mesh, s, it = setup(data_dir, mesh_shape, config_name, overrides)
    state, _ = run_steps(mesh, s, it, s.init_state(), 2)
    ckpt = Checkpointer(ckpt_dir, save_every=1)
    ckpt.save(2, state, it, config.to_json(), force=True)
    ckpt.close()
    np.savez(ckpt_dir + "/reference.npz", *[np.asarray(x) for x in jax.tree.leaves(state)])
    return dict(saved=2)


def restore(data_dir, mesh_shape, ckpt_dir, config_name, *overrides):
    """The checkpoint of `save` restored on another mesh: its difference from the saved state, its specs, and the
    loss of one more step (the restored iterator continues)."""
    config, mesh, s, it = setup(data_dir, mesh_shape, config_name, overrides)
    ckpt = Checkpointer(ckpt_dir, save_every=1)
    restored = ckpt.restore(ckpt.latest_step(), s.abstract_state(), it)
    ref = np.load(ckpt_dir + "/reference.npz")
    leaves = jax.tree.leaves(restored)
    diff = max(float(np.abs(np.asarray(x) - ref[f"arr_{i}"]).max()) for i, x in enumerate(leaves))
    specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(restored["params"])})
    step = int(restored["step"])
    _, run = run_steps(mesh, s, it, restored, 1)  # on the new mesh (it donates `restored`)
    ckpt.close()
    return dict(max_abs_diff=diff, step=step, specs=specs, next_loss=run[0])
