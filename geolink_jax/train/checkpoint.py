"""One thin wrapper around orbax's CheckpointManager: model params, optimizer state, step, config and the grain
iterator saved together, asynchronously, keep-last-N plus periodic keeps; restore into abstract targets built
under the *current* mesh, so a checkpoint written on one mesh restores onto another.

orbax writes each step into a temporary directory and commits it atomically (commit_success marker), so a process
killed mid-save leaves the previous step as the latest restorable one.
"""

import json
import pathlib

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory, *, save_every, keep=3, keep_period=None, async_save=True):
        self.directory = pathlib.Path(directory).absolute()
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
                           "config": ocp.JsonCheckpointHandler()})

    def save(self, step, state, data_iterator, config_json, force=False):
        """state: pytree (params, opt_state, step); returns True if a save was started."""
        return self.manager.save(
            step, force=force,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    data=grain.checkpoint.CheckpointSave(data_iterator),
                                    config=ocp.args.JsonSave(json.loads(config_json))))

    def latest_step(self):
        return self.manager.latest_step()

    def restore(self, step, abstract_state, data_iterator):
        """abstract_state: ShapeDtypeStructs carrying the target shardings. Restores data_iterator in place."""
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return out["state"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree):
    """Concrete sharded arrays → ShapeDtypeStructs with the same shardings (restore targets)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
