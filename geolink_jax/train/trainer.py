"""The pretraining loop: one obvious function, `train(config, workdir)`.

mesh → model and optimizer initialised directly into their shardings → grain iterator → restore the latest
checkpoint if any → jitted step (explicit in/out shardings, donated state) → metrics JSONL + TensorBoard,
checkpoints every K steps and on SIGTERM → final pictures for small runs.
"""

import json
import os
import pathlib
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util

from geolink_jax.data.graph_batch import GraphBatch, GraphBudget
from geolink_jax.data.pipeline import PipelineConfig, make_dataset
from geolink_jax.data.augment import AugmentConfig
from geolink_jax.models import GeoLink, GeoLinkConfig, flops
from geolink_jax.train import sharding
from geolink_jax.train.checkpoint import Checkpointer, abstract_like
from geolink_jax.train.optimizer import make_optimizer


def model_config(config, feature_dim):
    d = config.model.to_dict()
    d["osm_in_features"] = feature_dim
    return GeoLinkConfig.from_dict(d)


class Setup:
    """Everything static about a run on a mesh: model graph, shardings, optimizer, jitted step."""

    def __init__(self, config, mesh, feature_dim):
        self.config, self.mesh = config, mesh
        self.model_cfg = model_config(config, feature_dim)
        abstract = nnx.eval_shape(lambda: GeoLink(self.model_cfg, rngs=nnx.Rngs(0)))
        self.graphdef, self.abstract_params = nnx.split(abstract, nnx.Param)
        rules = [tuple(r) for r in config.sharding_rules]
        flat = nnx.to_flat_state(self.abstract_params)
        self.param_shardings = traverse_util.unflatten_dict({
            path: sharding.NamedSharding(mesh, sharding.logical_to_spec(v.get_metadata()["logical_axes"], v.shape,
                                                                        rules, mesh))
            for path, v in flat})
        self.tx = make_optimizer(config.optim, config.total_steps)
        self.replicated = sharding.NamedSharding(mesh, sharding.P())
        self.batch_groups = sharding.num_batch_shards(mesh) if config.faithful_batch_groups else 1

        params_abs = jax.eval_shape(self._init_params)
        p_struct = jax.tree.structure(params_abs)
        opt_abs = jax.eval_shape(self.tx.init, params_abs)
        # Optimizer moments mirror the params tree: give them the params' shardings; scalars are replicated.
        self.opt_shardings = jax.tree.map(
            lambda node: self.param_shardings if jax.tree.structure(node) == p_struct else self.replicated,
            opt_abs, is_leaf=lambda node: jax.tree.structure(node) == p_struct or not jax.tree.leaves(node)
            or isinstance(node, jax.ShapeDtypeStruct))
        self.state_shardings = dict(params=self.param_shardings, opt_state=self.opt_shardings,
                                    step=self.replicated)
        self.step_fn = jax.jit(self._train_step, donate_argnums=(0,),
                               in_shardings=(self.state_shardings, None, self.replicated),
                               out_shardings=(self.state_shardings, self.replicated))

    def _init_params(self):
        model = GeoLink(self.model_cfg, rngs=nnx.Rngs(self.config.seed))
        return nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def init_state(self):
        with jax.set_mesh(self.mesh):
            params = jax.jit(self._init_params, out_shardings=self.param_shardings)()
            opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)
            state = dict(params=params, opt_state=opt_state, step=jnp.zeros((), jnp.int32))
            # Commit every leaf to exactly the step's in_shardings, or the second step recompiles.
            return jax.device_put(state, self.state_shardings)

    def model(self, params):
        state = jax.tree.map(lambda x: x, self.abstract_params)  # fresh copy; replace_by_pure_dict mutates
        nnx.replace_by_pure_dict(state, params)
        return nnx.merge(self.graphdef, state)

    def _train_step(self, state, batch, key):
        key = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            return self.model(params).loss(batch["image"], GraphBatch(**batch["graph"]), key,
                                           batch_groups=self.batch_groups)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
            return optax.apply_updates(state["params"], updates), opt_state

        # A non-finite step changes nothing (params, optimizer moments), so no checkpoint ever holds its result.
        # lax.cond runs one branch: no elementwise select pass over the whole state on every step.
        params, opt_state = jax.lax.cond(finite, update, lambda _: (state["params"], state["opt_state"]), None)
        new_state = dict(params=params, opt_state=opt_state, step=state["step"] + 1)
        metrics = dict(aux, grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.int32))
        return new_state, metrics


def check_batch_size(batch_size, mesh, process_count=None):
    """The global batch must split evenly over the hosts (each feeds its own slice) and the batch shards."""
    process_count = process_count or jax.process_count()
    shards = sharding.num_batch_shards(mesh)
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {process_count} processes (hosts)")
    if batch_size % shards:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {shards} batch shards of the mesh "
                         f"{dict(mesh.shape)} (data × fsdp)")


def prepare_data(config, workdir):
    """Shard paths + manifest: config.data.path, or (empty) the bundled sample tiles preprocessed into workdir."""
    path = config.data.path
    if not path:
        from data_pipelines import preprocess
        from geolink_jax import samples
        from geolink_jax.data import tile_sources

        path = pathlib.Path(workdir) / "data"
        if not (path / "manifest.json").exists():
            cfg = preprocess.PreprocessConfig(encoder=config.data.encoder)
            preprocess.run_local(tile_sources.discover_tiles(samples.OSM_TILES_DIR), path, cfg, workers=1,
                                 progress=False)
    path = pathlib.Path(path)
    manifest = json.loads((path / "manifest.json").read_text())
    return sorted(path.glob("*.array_record-*")), manifest


def pipeline_config(config, manifest, image_size):
    d = config.data
    budget = GraphBudget.from_manifest(manifest, d.budget_stat)
    per_host = config.batch_size // jax.process_count()
    return PipelineConfig(batch_size=per_host, budget=budget, seed=config.seed, worker_count=d.worker_count,
                          read_threads=d.read_threads,
                          augment=AugmentConfig(image_size=image_size, faithful_crop=d.faithful_crop,
                                                draft_decode=d.draft_decode))


class _Preemption:
    """SIGTERM → finish the current step, save, exit.

    One process: our own SIGTERM handler. Several: JAX's coordination service already listens for the signal, and
    every host must stop at the same step or the collective save deadlocks, so we ask orbax's
    `reached_preemption(step)` (jax's preemption sync point), which all hosts answer identically."""

    def __init__(self, manager):
        self.manager = manager
        self.multihost = jax.process_count() > 1
        self.requested = False
        self._previous = None if self.multihost else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def check(self, step):
        if self.multihost and not self.requested:
            self.requested = bool(self.manager.reached_preemption(step))
        return self.requested

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def train(config, workdir, progress=True):
    """Run (or resume) pretraining; returns the list of logged metric rows."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.get("distributed") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # multi-host: must run before anything touches the backend
    config_json = config.to_json()
    (workdir / "config.json").write_text(config_json)

    paths, manifest = prepare_data(config, workdir)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    check_batch_size(config.batch_size, mesh)
    setup = Setup(config, mesh, manifest["feature_dim"])
    pipe_cfg = pipeline_config(config, manifest, setup.model_cfg.vit.image_size)
    data_iter = iter(make_dataset(paths, pipe_cfg, jax.process_index(), jax.process_count()))
    ckpt = Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every, keep=config.keep_checkpoints,
                        keep_period=config.get("keep_period") or None, async_save=config.async_checkpoints)
    state = setup.init_state()
    latest = ckpt.latest_step()
    if latest is not None:
        state = ckpt.restore(latest, abstract_like(state), data_iter)
    key = jax.random.key(config.seed)

    metrics_path = workdir / "metrics.jsonl"
    writer = _tensorboard(workdir) if config.get("tensorboard", True) else None
    rows, preempt = [], _Preemption(ckpt.manager)
    start = int(state["step"])
    bar = _progress(start, config.total_steps, progress)
    t_last, seen, last_host = time.perf_counter(), 0, None
    # analytic model FLOPs per sample (matmuls, forward + backward; models/flops.py) → TFLOP/s and MFU in the log
    flops_per_sample = flops.geolink_step_flops(setup.model_cfg, pipe_cfg.budget.nodes).train_step
    peak = flops.peak_flops(jax.devices()[0].device_kind, config.model.dtype)
    try:
        with jax.set_mesh(mesh):
            for step in range(start, config.total_steps):
                host = next(data_iter)
                stats = host.pop("stats")
                last_host = host
                batch = sharding.global_batch(host, mesh)
                state, metrics = setup.step_fn(state, batch, key)
                seen += config.batch_size
                done = step + 1
                if done % config.log_every == 0 or done == config.total_steps:
                    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    row.update(step=done, samples_per_s=seen / (now - t_last),
                               dropped_nodes=int(np.sum(stats["dropped_nodes"])))
                    row["tflops_per_s_per_device"] = row["samples_per_s"] * flops_per_sample / mesh.size / 1e12
                    if peak:
                        row["mfu"] = row["tflops_per_s_per_device"] * 1e12 / peak
                    t_last, seen = now, 0
                    rows.append(row)
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    if writer:
                        for k, v in row.items():
                            writer.add_scalar(k, v, done)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", img=f"{row['img_loss']:.3f}",
                                    con=f"{row['contrastive_loss']:.3f}", node=f"{row['node_loss']:.3f}",
                                    sps=f"{row['samples_per_s']:.1f}")
                    if row["nonfinite"] and config.on_nonfinite == "stop":
                        raise FloatingPointError(f"non-finite loss or gradient at step {done} (update skipped; "
                                                 "the last checkpoint is intact)")
                bar.update(1)
                stop = preempt.check(done)
                ckpt.save(done, state, data_iter, config_json, force=stop or done == config.total_steps)
                if stop:
                    ckpt.wait()
                    raise SystemExit(143)
    finally:
        bar.close()
        ckpt.close()
        preempt.restore()
        if writer:
            writer.flush()
    if config.get("pictures") and last_host is not None:
        write_pictures(setup, state, last_host, workdir)
    return rows


def write_pictures(setup, state, host_batch, workdir, count=4):
    """workdir/reconstructions.png (original | masked | reconstruction per sample) and workdir/osm_graph.png (the
    first sample's graph on its image), from the last training batch. Single-host runs only: the inputs are this
    host's samples."""
    from geolink_jax import pictures

    if jax.process_count() > 1:
        return
    n = min(count, len(host_batch["image"]))
    images = np.asarray(host_batch["image"][:n])
    graph = jax.tree.map(lambda x: np.asarray(x)[:n], host_batch["graph"])
    cfg = setup.model_cfg

    @jax.jit
    def outputs(params):
        _, aux = setup.model(params).loss(images, GraphBatch(**graph), jax.random.key(0), train=False,
                                          return_outputs=True)
        return aux["pred"], aux["mask"]

    with jax.set_mesh(setup.mesh):
        pred, mask = jax.device_get(outputs(state["params"]))
    pictures.reconstruction_figure(images, pred, mask, cfg.vit.patch_size, cfg.norm_pix_loss).save(
        pathlib.Path(workdir) / "reconstructions.png")
    one = jax.tree.map(lambda x: x[0], graph)
    pictures.graph_figure(images[0], one["positions"], one["n_node"], one["senders"], one["receivers"],
                          one["n_edge"]).save(pathlib.Path(workdir) / "osm_graph.png")


def _progress(start, total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="pretrain", unit="step")


def _tensorboard(workdir):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(workdir / "tensorboard"))
