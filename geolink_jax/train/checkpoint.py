"""One thin wrapper around orbax's CheckpointManager: the train state (params, frozen, model state, optimizer
state, step), the run config and the grain iterator saved together, asynchronously, keep-last-N plus periodic
keeps; restore into abstract targets built under the *current* mesh, so a checkpoint written on one mesh restores
onto another.

orbax writes each step into a temporary directory and commits it atomically (commit_success marker), so a process
killed mid-save leaves the previous step as the latest restorable one. A committed checkpoint is still verified
before it is trusted: every save also writes a fingerprint per array (a position-weighted sum of its bit patterns,
computed on the device, independent of the sharding), and a restore recomputes them and checks that every value is
finite. A checkpoint that fails to read, does not match its fingerprints or holds a non-finite value is moved aside
to `skipped-<step>` (kept for inspection, out of the retention policy's sight) with the reason, and the next older
one is tried.
"""

import contextlib
import errno
import json
import logging
import pathlib
import re
import shutil
import sys
import traceback

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from geolink_jax.train import hosts


def aside_path(directory, step):
    """The first free checkpoints/skipped-<step>[-k]: every damaged checkpoint set aside is kept for inspection."""
    path, k = pathlib.Path(directory) / f"skipped-{step}", 1
    while path.exists():
        k += 1
        path = pathlib.Path(directory) / f"skipped-{step}-{k}"
    return path


class CheckpointError(RuntimeError):
    """A checkpoint (or every checkpoint of a directory) cannot be trusted."""


class CheckpointMismatch(ValueError):
    """A sound checkpoint written for other shapes than the current config's: a config mistake, not damage (the
    checkpoint is left where it is)."""


def _leaf_fingerprint(x):
    if x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:
        bits = x.astype(jnp.uint32)
    idx = jnp.arange(bits.size, dtype=jnp.uint32).reshape(bits.shape)
    fp = jnp.sum(bits * (idx * jnp.uint32(2654435761) + jnp.uint32(1)), dtype=jnp.uint32)
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.bool_(True)
    return fp, finite


# one jitted function: every save of a run (same shapes and shardings) reuses its compilation
_fingerprints_jit = jax.jit(lambda leaves: [_leaf_fingerprint(x) for x in leaves])


def fingerprints(tree):
    """{path: (uint32, finite)} per array leaf: Σ bits(x_i)·(2654435761·i + 1) mod 2³² and whether every value is
    finite. Computed under jit on the (sharded) arrays; sums mod 2³² do not depend on the reduction order or mesh."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    values = jax.device_get(_fingerprints_jit([jnp.asarray(x) for _, x in flat]))
    return {_path(p): (int(fp), bool(ok)) for (p, _), (fp, ok) in zip(flat, values)}


def _path(keys):
    """A tree path as 'opt_state/1/0/mu/w', the same whether read into its target's types or as plain dicts."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in keys)


def verify(state, saved):
    """Raise CheckpointError naming the first array whose fingerprint differs from `saved` or that is not finite."""
    now = fingerprints(state)
    if saved is not None:
        missing = sorted(set(saved) ^ set(now))
        if missing:
            raise CheckpointError(f"arrays differ from the saved list: {missing[:3]}")
        for path, (fp, _) in now.items():
            if fp != saved[path][0]:
                raise CheckpointError(f"{path} does not match its saved fingerprint (the data on disk changed)")
    bad = [path for path, (_, ok) in now.items() if not ok]
    if bad:
        raise CheckpointError(f"non-finite values in {', '.join(bad[:3])}")


def _check_positionable(data_iterator, data_dir):
    """A data iterator saved by another process count can be positioned by step only if it is the plain grain
    iterator (state {'next_index'}); multiprocess prefetch keeps per-worker state tied to the topology."""
    if set(data_iterator.get_state()) != {"next_index"}:
        saved = sorted(p.name for p in data_dir.glob("process_*.json"))
        raise CheckpointMismatch(f"{data_dir.parent}: its data iterator was saved by another number of processes "
                                 f"({', '.join(saved)}) with multiprocess prefetch; resume with that many processes, "
                                 "or with data.worker_count=0, which resumes on any number")


def _exception_chain(e):
    """`e` and the exceptions it was raised from (its __cause__, else __context__), outermost first."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _unreadable(e):
    """A read failure of any kind → the CheckpointError that says so, in one line: the innermost cause (orbax wraps
    TensorStore's error in one that dumps the store's spec), "truncated" where a read ran past a file's end."""
    inner = _exception_chain(e)[-1]
    first = str(inner).splitlines()[0] if str(inner).strip() else ""
    first = first.split(" See full TensorStore details")[0]
    truncated = re.search(r'OUT_OF_RANGE: Error reading "([^"]+)".*not valid for value of size (\d+)', first)
    if truncated:
        return CheckpointError(f"a file of it is truncated (reading {truncated[1]} ran past the end of its "
                               f"{truncated[2]}-byte data file)")
    return CheckpointError(f"cannot be read ({type(inner).__name__}: {first[:300]})")


def _drop_abandoned_read_errors():
    """A failed orbax restore or save abandons its other reads or writes, whose errors surface later through
    sys.unraisablehook: one traceback (and for reads a TensorStore spec dump) each, thousands of lines per
    checkpoint. Those kinds (the abandoned read, the closed event loop it reports to) are dropped, process-wide,
    from the first Checkpointer or read on; any other unraisable error still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_abandoned_reads", False):
        return

    def hook(unraisable):
        text = str(unraisable.exc_value)
        if text.startswith("Encountered error while reading array index") or text == "Event loop is closed":
            return
        previous(unraisable)

    hook.drops_abandoned_reads = True
    sys.unraisablehook = hook


def _failure_cause(e):
    """The short cause of a failed save: "no space left on device" wherever ENOSPC hides in the exception chain
    (an OSError, or TensorStore's text of one), else the first line of the innermost error."""
    chain = _exception_chain(e)
    for err in chain:
        if getattr(err, "errno", None) == errno.ENOSPC or "no space left" in str(err).lower():
            return "no space left on device"
        if getattr(err, "errno", None) == errno.EDQUOT or "quota exceeded" in str(err).lower():
            return "disk quota exceeded"
    inner = chain[-1]
    first = str(inner).splitlines()[0][:200] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {first}"


class _OrbaxErrorRecords(logging.Filter):
    """Drops orbax's own ERROR records. A failed save is reported by orbax from several threads (absl lines with
    tracebacks) and by asyncio for every abandoned write ("Task exception was never retrieved"): hundreds of lines
    for one full disk. The Checkpointer raises the one line that names the directory and the cause (`check`, read
    failures in `restore`), so nothing is lost; records from anything else pass."""

    def filter(self, record):
        if record.levelno < logging.ERROR:
            return True
        tb = record.exc_info[2] if record.exc_info else None
        raised_in_orbax = tb is not None and any("/orbax/" in f.filename for f in traceback.extract_tb(tb))
        return not (raised_in_orbax or "/orbax/" in record.pathname or "/orbax/" in record.getMessage())


def _quiet_orbax_failures():
    """orbax's own reports of a failed read or save dropped (the logging filter above, the unraisable hook of
    `_drop_abandoned_read_errors`): the caller reports the failure in one line. Idempotent, process-wide."""
    _drop_abandoned_read_errors()
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OrbaxErrorRecords) for f in logger.filters):
            logger.addFilter(_OrbaxErrorRecords())


def _tree_bytes(path):
    return sum(p.stat().st_size for p in pathlib.Path(path).rglob("*") if p.is_file())


class Checkpointer:
    def __init__(self, directory, *, save_every, keep=3, keep_period=None, async_save=True, report=print):
        self.directory = pathlib.Path(directory).absolute()
        self.report = report
        self._warned_space = False
        self.failed = False  # a save failed: close() quietly
        _quiet_orbax_failures()
        policies = [ocp.checkpoint_managers.LatestN(keep)]
        if keep_period:
            policies.append(ocp.checkpoint_managers.EveryNSteps(keep_period))
        preservation = (policies[0] if len(policies) == 1
                        else ocp.checkpoint_managers.AnyPreservationPolicy(policies))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=save_every, enable_async_checkpointing=async_save,
            preservation_policy=preservation, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler(), "integrity": ocp.JsonCheckpointHandler()})

    def save(self, step, state, data_iterator, config_json, force=False):
        """state: pytree (params, opt_state, step); returns True if a save was started. A save that failed in the
        background (or fails now) raises CheckpointError in one line (see `check`)."""
        self.check()
        if not (force or self.manager.should_save(step)):
            return False
        self._check_space()
        integrity = {"fingerprints": fingerprints(state)}
        with self._failures():
            return self.manager.save(
                step, force=force,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=grain.checkpoint.CheckpointSave(data_iterator),
                                        config=ocp.args.JsonSave(json.loads(config_json)),
                                        integrity=ocp.args.JsonSave(integrity)))

    def check(self):
        """Raise CheckpointError at once if an asynchronous save has failed (a full disk: ENOSPC), naming the
        directory, the cause and the last good checkpoint, with the partial directory removed. Host-side only: call
        it every step."""
        with self._failures():
            self.manager.check_for_errors()

    @contextlib.contextmanager
    def _failures(self):
        try:
            yield
        except Exception as e:  # noqa: BLE001 - any failure of a save: the one line below, not orbax's trace
            self.failed = True
            if jax.process_index() == 0:
                for partial in self.directory.glob("*.orbax-checkpoint-tmp*"):
                    shutil.rmtree(partial, ignore_errors=True)
            good = checkpoint_steps(self.directory)
            last = f"the last good checkpoint is step {good[0]}" if good else "no checkpoint was kept"
            raise CheckpointError(f"{self.directory}: saving a checkpoint failed ({_failure_cause(e)}); the run "
                                  f"stopped, {last} (the partial one removed)") from e

    def _check_space(self):
        """Warn once when the filesystem has less free space than the newest checkpoint takes (+10%)."""
        if self._warned_space or jax.process_index() != 0:
            return
        good = checkpoint_steps(self.directory)
        if not good:
            return
        need = 1.1 * _tree_bytes(self.directory / str(good[0]))
        free = shutil.disk_usage(self.directory).free
        if free < need:
            self._warned_space = True
            self.report(f"warning: {self.directory}: {free / 2**20:.0f} MiB free, a checkpoint takes "
                        f"{need / 1.1 / 2**20:.0f} MiB; the next save may fail (free space, or lower keep_checkpoints)")

    def latest_step(self):
        return self.manager.latest_step()

    def all_steps(self):
        return sorted(self.manager.all_steps())

    def restore(self, step, abstract_state, data_iterator):
        """abstract_state: ShapeDtypeStructs carrying the target shardings. Restores data_iterator in place.
        Raises CheckpointError if the checkpoint cannot be read or fails verification."""
        try:
            meta = self.manager.item_metadata(step)["state"]
            saved = {_path(p): tuple(m.shape) for p, m in
                     jax.tree_util.tree_flatten_with_path(getattr(meta, "tree", meta))[0]}
        except Exception as e:  # noqa: BLE001 - unreadable metadata: damaged
            raise _unreadable(e) from e
        want = {_path(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        if saved != want:
            diff = sorted(set(saved.items()) ^ set(want.items()))[:4]
            raise CheckpointMismatch(
                f"{self.directory / str(step)} was written for other shapes than this run's config (first "
                f"differences, (array, shape): {diff}); use the config it was written with, or another workdir")
        args = dict(state=ocp.args.StandardRestore(abstract_state))
        data_dir = self.directory / str(step) / "data"
        other_topology = data_dir.is_dir() and not any(data_dir.glob(f"process_*-of-{jax.process_count()}.json")) \
            and any(data_dir.glob("process_*-of-*.json"))
        if other_topology:  # saved by another number of processes: the position follows from the step (below)
            _check_positionable(data_iterator, data_dir)
        else:  # (a missing file of this topology fails the restore: a damaged checkpoint)
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        has_integrity = (self.directory / str(step) / "integrity").exists()  # older checkpoints have none
        if has_integrity:
            args["integrity"] = ocp.args.JsonRestore()
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001 - any read failure means: not restorable
            raise _unreadable(e) from e
        verify(out["state"], out["integrity"]["fingerprints"] if has_integrity else None)
        if "data" not in args:
            # the training stream is the same on any process count and every step takes one batch
            # (data.pipeline.make_dataset), so `step` batches is the exact position
            data_iterator.set_state({"next_index": int(out["state"]["step"])})
        return out["state"]

    def restore_latest_good(self, abstract_state, data_iterator, report=print):
        """Restore the newest checkpoint that verifies → (step, state), or (None, None) when there is none. Each
        checkpoint skipped on the way is reported and moved aside; if checkpoints exist but none verifies, raise."""
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                return step, self.restore(step, abstract_state, data_iterator)
            except CheckpointError as e:
                report(f"warning: checkpoint {self.directory / str(step)} skipped: {e}")
                self.set_aside(step)
        if steps:
            raise CheckpointError(f"{self.directory}: none of the checkpoints {steps} can be restored (moved to "
                                  "skipped-<step>); remove the directory to start again")
        return None, None

    def set_aside(self, step):
        """Move a step out of orbax's view (and its retention policy): checkpoints/skipped-<step> (-2, -3, … when
        an earlier damaged checkpoint of that step is already kept there)."""
        src = self.directory / str(step)
        if src.exists() and jax.process_index() == 0:  # one filesystem, one mover; the others wait for it
            src.rename(aside_path(self.directory, step))
        hosts.barrier(f"geolink_jax: checkpoint {step} set aside")
        self.manager.reload()

    def wait(self):
        with self._failures():
            self.manager.wait_until_finished()

    def close(self):
        """Wait for the last save and close; after a failure already raised, close quietly."""
        if self.failed:
            with contextlib.suppress(Exception):
                self.manager.close()
            return
        with self._failures():
            self.manager.wait_until_finished()
        self.manager.close()


def restore_on_host(ckptr, path):
    """An orbax tree at `path` as numpy arrays whatever devices wrote it: the restore target is built from the
    tree's metadata, so a checkpoint written from arrays sharded over a pod's (or a simulated) mesh reads on one CPU
    (without a target orbax insists on the writer's topology)."""
    meta = ocp.StandardCheckpointHandler().metadata(pathlib.Path(path))  # the tree's own (no step metadata)
    tree = getattr(meta, "tree", meta)
    target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype) if hasattr(m, "shape") and hasattr(m, "dtype")
                          else m, tree)
    return ckptr.restore(path, target=target)


def checkpoint_steps(directory):
    """The steps of the checkpoints in `directory`, newest first."""
    return sorted((int(p.name) for p in pathlib.Path(directory).glob("*") if p.name.isdigit()), reverse=True)


def load_verified(directory, report=print, step=None, target=None):
    """The newest verified checkpoint's state in `directory` (no target: numpy arrays, no data iterator) →
    (step, state); with `step`, that checkpoint only. `target`: a subtree of the state (e.g. {"params", "frozen"})
    as jax.ShapeDtypeStructs with shardings, restored straight into those shards and verified against its own
    arrays' fingerprints. Damaged ones are reported and skipped (not moved: a reader does not change a run's
    directory)."""
    directory = pathlib.Path(directory).absolute()
    steps = checkpoint_steps(directory)
    if step is not None:
        if step not in steps:
            raise CheckpointError(f"{directory}: no checkpoint of step {step} (steps: {sorted(steps)})")
        steps = [step]
    _quiet_orbax_failures()

    def restore(where):
        if target is None:
            with ocp.StandardCheckpointer() as ckptr:
                return restore_on_host(ckptr, where)
        with ocp.PyTreeCheckpointer() as ckptr:
            return ckptr.restore(where, args=ocp.args.PyTreeRestore(
                item=target, partial_restore=True,
                restore_args=jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)))

    for step in steps:
        try:
            state = restore(directory / str(step) / "state")
            integrity_file = directory / str(step) / "integrity" / "metadata"
            saved = json.loads(integrity_file.read_text())["fingerprints"] if integrity_file.exists() else None
            if saved is not None and target is not None:  # a partial restore is checked on what it restored
                saved = {k: v for k, v in saved.items() if k.split("/")[0] in target}
            verify(state, saved)
            return step, state
        except Exception as e:  # noqa: BLE001 - report and try the next older one
            reason = e if isinstance(e, CheckpointError) else _unreadable(e)
            report(f"warning: checkpoint {directory / str(step)} skipped: {reason}")
    raise CheckpointError(f"{directory}: no checkpoint can be restored" if steps else
                          f"{directory}: no checkpoints")
