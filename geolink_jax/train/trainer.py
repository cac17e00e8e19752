"""The pretraining loop, for any model family: one obvious function, `train(config, workdir)`.

mesh → the family's model and the optimizer initialised directly into their shardings → the family's grain
iterator → restore the latest checkpoint if any → jitted step (explicit in/out shardings, donated state) →
metrics JSONL + TensorBoard, checkpoints every K steps and on SIGTERM → the family's final pictures. The workdir is
locked for the run (train/workdir_lock.py).

The train state is a dict: params (trained), frozen (other Params: no gradient, no optimizer state), state (the
module's non-Param variables, updated inside the step), opt_state, step. See geolink_jax/family.py.
"""

import contextlib
import json
import os
import pathlib
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from geolink_jax import config as config_lib
from geolink_jax import family as family_lib
from geolink_jax.data import outputs, shards
from geolink_jax.train import chips, hosts, sharding, workdir_lock
from geolink_jax.train.checkpoint import Checkpointer
from geolink_jax.train.optimizer import make_optimizer


def resolve(config, manifest):
    """The final run config: the model fields the data decide (the family's model_fields_from_data) filled in, and
    the derived values (config_lib.derive) recorded under `derived`. What config.json holds."""
    fam = family_lib.get_family(config.family)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.model.update(fam.model_fields_from_data(manifest or {}))
        derived = config_lib.derive(config, fam.num_examples(manifest or {}, config))
        config.derived = derived.as_dict()
    config_lib.check(config)
    return config


class Setup:
    """Everything static about a run on a mesh: the family's module graph, shardings, optimizer, jitted step.

    config: a resolved config (see `resolve`)."""

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh
        self.family = family_lib.get_family(config.family)
        self.model_cfg = family_lib.model_config(self.family, config)
        self.total_steps = int(config.derived.total_steps)
        abstract = family_lib.abstract_model(self.family, self.model_cfg)
        self.graphdef, *self.abstract_states = family_lib.split(abstract, self.family)  # params, frozen, state
        rules = config.sharding_rules
        params_sh, frozen_sh, model_state_sh = (sharding.param_shardings(s, mesh, rules) for s in self.abstract_states)
        self.param_shardings = params_sh
        self.tx = make_optimizer(config.optim, self.total_steps, config.derived.lr, config.derived.warmup_steps)
        self.replicated = sharding.NamedSharding(mesh, sharding.P())
        abstract_params = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                                       family_lib.pure(self.abstract_states[0]))
        opt_sh = sharding.optimizer_shardings(self.tx, jax.eval_shape(self.tx.init, abstract_params), params_sh, mesh)
        self.state_shardings = dict(params=params_sh, frozen=frozen_sh, state=model_state_sh, opt_state=opt_sh,
                                    step=self.replicated)
        self.ctx = family_lib.StepContext(
            mesh=mesh, batch_groups=sharding.num_batch_shards(mesh) if config.faithful_batch_groups else 1,
            train=True, batch_axes=sharding.BATCH_AXES)
        self.step_fn = jax.jit(self._train_step, donate_argnums=(0,),
                               in_shardings=(self.state_shardings, None, self.replicated),
                               out_shardings=(self.state_shardings, self.replicated))

    def _init_state(self, weights=None):
        rngs = nnx.Rngs(self.config.seed)
        model = (self.family.build(self.model_cfg, rngs) if weights is None
                 else self.family.build(self.model_cfg, rngs, weights))
        _, params, frozen, state = family_lib.split(model, self.family)
        params = family_lib.pure(params)
        return dict(params=params, frozen=family_lib.pure(frozen), state=family_lib.pure(state),
                    opt_state=self.tx.init(params), step=jnp.zeros((), jnp.int32))

    def init_state(self):
        # weight files the config names, read on the host and passed in as arguments (not baked in as constants)
        weights = self.family.initial_weights(self.model_cfg) if self.family.initial_weights else None
        with jax.set_mesh(self.mesh):
            state = jax.jit(self._init_state, out_shardings=self.state_shardings)(weights)
            # Commit every leaf to exactly the step's in_shardings, or the second step recompiles.
            return jax.device_put(state, self.state_shardings)

    def abstract_state(self):
        """ShapeDtypeStructs of the train state with their shardings (restore targets, compile-ahead)."""
        shapes = jax.eval_shape(self._init_state)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes,
                            self.state_shardings)

    def model(self, state):
        """The train state (params, frozen, state) → the family's module holding those values."""
        return family_lib.merge(self.graphdef, self.abstract_states, (state["params"], state["frozen"],
                                                                      state["state"]))

    def _train_step(self, state, batch, key):
        key = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            model = self.model(dict(state, params=params))
            loss, metrics = self.family.loss(model, batch, key, self.ctx)
            # non-Param variables the loss assigned to (queues, batch statistics) leave the step as new state
            return loss, (metrics, family_lib.pure(nnx.state(model, nnx.Not(nnx.Param))))

        (loss, (aux, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(_):
            updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], updates)
            if self.family.constrain is not None:  # e.g. a clamp after every update, as the family's recipe
                params = self.family.constrain(params, self.model_cfg)
            return params, opt_state, model_state

        # A non-finite step changes nothing (params, optimizer moments, model state), so no checkpoint ever holds
        # its result. lax.cond runs one branch: no elementwise select pass over the whole state on every step.
        params, opt_state, model_state = jax.lax.cond(
            finite, update, lambda _: (state["params"], state["opt_state"], state["state"]), None)
        new_state = dict(params=params, frozen=state["frozen"], state=model_state, opt_state=opt_state,
                         step=state["step"] + 1)
        metrics = dict(aux, loss=loss, grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.int32))
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
    """Shard paths + manifest: config.data.path, or (empty) the family's bundled data prepared in workdir (by the
    first process; the others wait for it)."""
    path = config.data.path
    if not path:
        default_data = family_lib.get_family(config.family).default_data
        path = default_data(config, workdir) if jax.process_index() == 0 else None
        hosts.barrier("geolink_jax: default data prepared")
        path = path or default_data(config, workdir)  # now present: reused, not redone
    path = pathlib.Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{path}: no manifest.json (not a preprocessed data directory)")
    manifest = json.loads(manifest_path.read_text())
    problem = family_lib.data_problem(family_lib.get_family(config.family), manifest, path)
    if problem:  # another family's shards: one line before any record is read
        raise shards.DataError(problem)
    return shards.manifest_shards(path, manifest), manifest




class _Preemption:
    """SIGTERM or SIGINT (Ctrl-C) → finish the current step, save, exit (143 / 130).

    One process: our own handlers. Several: JAX's coordination service already listens for SIGTERM, and every host
    must stop at the same step or the collective save deadlocks, so we ask orbax's `reached_preemption(step)`
    (jax's preemption sync point), which all hosts answer identically."""

    EXIT = {signal.SIGTERM: 143, signal.SIGINT: 130}

    def __init__(self, manager):
        self.manager = manager
        self.multihost = jax.process_count() > 1
        self.requested = 0  # the exit code to stop with, 0: go on
        signals = (signal.SIGINT,) if self.multihost else (signal.SIGTERM, signal.SIGINT)
        self._previous = {s: signal.signal(s, self._handle) for s in signals}

    def _handle(self, signum, frame):
        self.requested = self.EXIT[signum]

    def check(self, step):
        if self.multihost and not self.requested and self.manager.reached_preemption(step):
            self.requested = 143
        return self.requested

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _drop_rows_after(metrics_path, step):
    """Keep the metrics rows of steps ≤ step (one row per step after a resume)."""
    if metrics_path.exists():
        lines = metrics_path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= step]
        if len(kept) != len(lines):
            outputs.write_text(metrics_path, "".join(line + "\n" for line in kept))


def train(config, workdir, progress=True):
    """Run (or resume) pretraining; returns the list of logged metric rows."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    explicit = config.get("process") or {}
    if config.get("distributed") or os.environ.get("JAX_COORDINATOR_ADDRESS") or explicit.get("count", 0) > 0:
        # multi-host: must run before anything touches the backend
        jax.distributed.initialize(coordinator_address=explicit.get("coordinator") or None,
                                   num_processes=explicit.get("count") or None,
                                   process_id=explicit.get("index") if explicit.get("index", -1) >= 0 else None)
    # one run per workdir, held by process 0 (WorkdirInUse before anything is written)
    lock = workdir_lock.hold(workdir, warn=lambda line: print(line, file=sys.stderr)) \
        if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return _train_locked(config, workdir, progress)


def check_workdir_family(config, workdir):
    """A ConfigError naming the workdir when its config.json is another family's run (before its data or
    checkpoints are touched)."""
    path = workdir / "config.json"
    if path.exists():
        try:
            earlier = json.loads(path.read_text()).get("family")
        except (json.JSONDecodeError, AttributeError):
            return  # unreadable: the checkpoints' own checks decide
        if earlier and earlier != config.family:
            raise config_lib.ConfigError(f"{workdir}: holds a {earlier} run (its config.json), and this config is "
                                         f"a {config.family} run; give it another --workdir")


def _train_locked(config, workdir, progress):
    check_workdir_family(config, workdir)
    paths, manifest = prepare_data(config, workdir)
    config = resolve(config, manifest)
    mesh = sharding.make_mesh(config.mesh.to_dict())
    check_batch_size(config.batch_size, mesh)
    setup = Setup(config, mesh)
    fam, total_steps = setup.family, setup.total_steps
    data_iter = iter(fam.dataset(paths, manifest, config, setup.model_cfg, jax.process_index(), jax.process_count()))
    report = lambda line: print(line, file=sys.stderr)  # noqa: E731
    ckpt = Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every, keep=config.keep_checkpoints,
                        keep_period=config.get("keep_period") or None, async_save=config.async_checkpoints,
                        report=report)
    _, state = ckpt.restore_latest_good(setup.abstract_state(), data_iter, report=report)
    if state is None:
        state = setup.init_state()
    config_json = config.to_json()
    lead = jax.process_index() == 0  # the one process that writes the workdir's shared files
    if lead:
        outputs.write_text(workdir / "config.json", config_json)  # only once the run's state is in hand
    key = jax.random.key(config.seed)

    start = int(state["step"])
    metrics_path = workdir / "metrics.jsonl"
    if lead:
        _drop_rows_after(metrics_path, start)  # a resumed run supersedes what was logged past its checkpoint
    writer = _tensorboard(workdir, start) if config.get("tensorboard", True) and lead else None
    rows, preempt = [], _Preemption(ckpt.manager)
    bar = _progress(start, total_steps, progress and lead)
    t_last, seen, last_host = time.perf_counter(), 0, None
    # analytic model FLOPs per sample (matmuls, forward + backward) → TFLOP/s and MFU in the log
    flops_per_step = family_lib.step_flops(fam, setup.model_cfg, config.batch_size, manifest)
    peak = chips.peak_flops(jax.devices()[0].device_kind, config_lib.model_dtype(config))
    skipped = jnp.zeros((), jnp.int32)
    try:
        with jax.set_mesh(mesh):
            for step in range(start, total_steps):
                host = next(data_iter)
                stats = host.pop("stats", {})
                last_host = host
                batch = sharding.global_batch(host, mesh)
                if step == start and jax.process_count() > 1:
                    # compile, then meet: every host starts its first step together (host compile times differ)
                    setup.step_fn.lower(state, batch, key).compile()
                    hosts.barrier("geolink_jax: step compiled")
                state, metrics = setup.step_fn(state, batch, key)
                skipped = skipped + metrics["nonfinite"]  # on the device: no host round trip per step
                seen += config.batch_size
                done = step + 1
                if done % config.log_every == 0 or done == total_steps:
                    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    now = time.perf_counter()
                    row.update(step=done, samples_per_s=seen / (now - t_last))
                    row.update({k: int(np.sum(v)) for k, v in stats.items()})
                    row["skipped_steps"] = int(skipped)  # updates skipped as non-finite since this run started
                    row["tflops_per_s_per_device"] = (row["samples_per_s"] / config.batch_size * flops_per_step
                                                      / mesh.size / 1e12)
                    if peak:
                        row["mfu"] = row["tflops_per_s_per_device"] * 1e12 / peak
                    t_last, seen = now, 0
                    rows.append(row)
                    if lead:
                        with open(metrics_path, "a") as f:
                            f.write(json.dumps(row) + "\n")
                    if writer:
                        for k, v in row.items():
                            writer.add_scalar(k, v, done)
                    bar.set_postfix({k: f"{row[k]:.3f}" for k in fam.log_keys if k in row},
                                    sps=f"{row['samples_per_s']:.1f}")
                    if row["nonfinite"] and config.on_nonfinite == "stop":
                        raise FloatingPointError(f"non-finite loss or gradient at step {done} (update skipped; "
                                                 "the last checkpoint is intact)")
                bar.update(1)
                stop = preempt.check(done)
                ckpt.save(done, state, data_iter, config_json, force=bool(stop) or done == total_steps)
                if stop:
                    ckpt.wait()
                    raise SystemExit(stop)
    finally:
        bar.close()
        ckpt.close()
        preempt.restore()
        if writer:
            writer.flush()
    check_skipped(int(skipped), total_steps - start, config.get("nonfinite_max_fraction", 0.05), workdir)
    if config.get("pictures") and last_host is not None and fam.pictures and jax.process_count() == 1:
        # the inputs are this host's samples: single-host runs only
        with jax.set_mesh(mesh):
            fam.pictures(setup.model(state), last_host, workdir)
    return rows


def check_skipped(skipped, ran, max_fraction, workdir):
    """FloatingPointError (exit 1, one line) where more than `max_fraction` of the `ran` steps of this run were
    skipped as non-finite: a run that trained on little but its skips must not end as a success."""
    if ran and skipped / ran > max_fraction:
        raise FloatingPointError(f"{skipped} of the {ran} steps this run made were skipped as non-finite (more than "
                                 f"nonfinite_max_fraction {max_fraction:g}): their data or learning rate need a "
                                 f"look; checkpoints in {workdir}/checkpoints")


def _progress(start, total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, desc="pretrain", unit="step")


def _tensorboard(workdir, start_step):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    # purge_step: TensorBoard drops what an earlier run logged at or after the step this run resumes from
    return SummaryWriter(str(workdir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
