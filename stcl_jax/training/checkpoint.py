"""One Orbax CheckpointManager for the train state and the grain data-iterator state, plus preemption.

Layout: `workdir/checkpoints/<step>/{state, data_iter}` (docs/design.md). Saves are asynchronous (the arrays are
copied to host memory in `save`, then written in a background thread); Orbax writes each step into a temporary
directory and renames it only when complete, so a process killed in the middle of a save leaves the previous
checkpoints intact and the partial one is not seen as a step (it is cleaned up on the next start).

Preemption: `PreemptionWatcher` turns SIGTERM into a flag the loop polls; with several processes it also asks
Orbax/JAX's preemption sync point (set up by `jax.distributed.initialize`), so that all processes stop at the same
step and write one consistent checkpoint.
"""

import logging
import os
import signal

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger("stcl_jax.train")


class Checkpointer:
    """Saves and restores {"state": TrainState pytree, "data_iter": grain iterator} every N steps, keeping K."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        if every_steps <= 0:
            raise ValueError(f"config.checkpoint_every_steps must be > 0, got {every_steps}")
        if keep <= 0:
            raise ValueError(f"config.keep_checkpoints must be > 0, got {keep}")
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data_iter"))

    def latest_step(self):
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def should_save(self, step: int, total_steps: int) -> bool:
        return step % self.every_steps == 0 or step == total_steps

    def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
        """Starts an (async) save of `state` and the iterator position at `step`; returns whether it saved."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data_iter=grain.checkpoint.CheckpointSave(data_iter))
        saved = self.manager.save(step, args=args, force=force)
        if saved:
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_state, data_iter):
        """The TrainState at `step`, each leaf in the sharding of `abstract_state`; moves `data_iter` in place.

        `abstract_state`: a pytree of jax.ShapeDtypeStruct with `sharding` set (the shapes of a fresh state).
        """
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data_iter=grain.checkpoint.CheckpointRestore(data_iter))
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # the message of a shape/structure mismatch is long and does not say what to do
            raise RuntimeError(
                f"could not restore checkpoint step {step} from {self.directory}: {e}\nThe checkpoint was probably "
                "written with another model/optimizer config; use a fresh --workdir or the config it was "
                "trained with (saved as config.json in the workdir).") from e
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        return restored["state"]

    def wait_until_finished(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_with_shardings(abstract_state, shardings):
    """ShapeDtypeStructs carrying the target shardings (what StandardRestore needs to place each leaf)."""
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, shardings)


class PreemptionWatcher:
    """`preempted(step)` becomes True after SIGTERM (single process) or at JAX's preemption sync point."""

    def __init__(self, manager: ocp.CheckpointManager):
        self.manager = manager
        self.signalled = False
        self._previous = None
        # With jax.distributed, JAX's coordination service already listens for SIGTERM and turns it into a sync
        # point that every process reaches at the same step; a Python handler would replace its handler.
        if jax.process_count() == 1:
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame):
        del frame
        log.warning("received signal %d: will save a checkpoint and stop after the current step", signum)
        self.signalled = True

    def preempted(self, step: int) -> bool:
        if jax.process_count() > 1:
            return self.manager.reached_preemption(step)
        return self.signalled

    def restore_handler(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
