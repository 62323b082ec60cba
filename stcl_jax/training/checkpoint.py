"""One Orbax CheckpointManager for the train state and the grain data-iterator state, plus integrity and preemption.

Layout: `workdir/checkpoints/<step>/{state, data_iter, sha256.json}` (docs/design.md). Saves are asynchronous (the
arrays are copied to host memory in `save`, then written in a background thread); Orbax writes each step into a
temporary directory and renames it only when complete, so a process killed in the middle of a save leaves the
previous checkpoints intact and the partial one is not seen as a step (it is cleaned up on the next start).

Integrity: when a save is finalised (Orbax's post-finalisation callback, still in the temporary directory, so the
digest appears with the checkpoint in one rename) process 0 writes `sha256.json`: the size and SHA-256 of every
file under `state/` and `data_iter/`. `restore_latest` verifies the newest checkpoint against it and falls back to
the newest intact one, with a warning naming each bad step, which is moved to `workdir/checkpoints.bad/` (out of
Orbax's keep-K garbage collection, so a bad newest checkpoint never costs the last good one). A step without a
digest counts as bad unless it predates this version (`workdir/checkpoint_integrity.json` lists those). No intact
checkpoint at all: `CheckpointIntegrityError`, one line.

Preemption: `PreemptionWatcher` turns SIGTERM into a flag the loop polls; with several processes it also asks
Orbax/JAX's preemption sync point (set up by `jax.distributed.initialize`), so that all processes stop at the same
step and write one consistent checkpoint.
"""

import json
import logging
import os
import shutil
import signal

import grain
import jax
import orbax.checkpoint as ocp

from stcl_jax import workdir as workdir_lib
from stcl_jax.workdir import DIGEST, ITEMS, integrity_path, newest_intact_step, no_intact_error, step_folders, write_digest

log = logging.getLogger("stcl_jax.train")


class Checkpointer:
    """Saves and restores {"state": TrainState pytree, "data_iter": grain iterator} every N steps, keeping K; each
    checkpoint carries a digest of its files, verified by `restore_latest`."""

    def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True):
        if every_steps <= 0:
            raise ValueError(f"config.checkpoint_every_steps must be > 0, got {every_steps}")
        if keep <= 0:
            raise ValueError(f"config.keep_checkpoints must be > 0, got {keep}")
        self.workdir = os.path.abspath(workdir)
        self.directory = workdir_lib.checkpoints_dir(self.workdir)
        self.every_steps = every_steps
        self.async_save = async_save
        self._saving = None  # the step whose async save is in flight
        self.last_good_step = None  # newest step restored or saved by this run (finite, digest written)
        self._mark_undigested_steps()
        _sync("stcl_jax checkpoint integrity file")
        callback = ocp.AsyncOptions(post_finalization_callback=self._digest_in_flight) if async_save else None
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save, async_options=callback)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def _mark_undigested_steps(self):
        """The first time this version opens a workdir, its existing steps (saved without digests) are listed."""
        if jax.process_index() != 0 or os.path.isfile(integrity_path(self.directory)):
            return
        os.makedirs(self.directory, exist_ok=True)
        old = [s for s in step_folders(self.directory) if not os.path.isfile(os.path.join(self.directory, str(s),
                                                                                           DIGEST))]
        with open(integrity_path(self.directory), "w", encoding="utf-8") as f:
            json.dump({"version": 1, "undigested_steps": old}, f)

    def _step_dir_being_written(self, step: int) -> str:
        """Orbax's temporary folder of `step` (renamed to `<step>` right after the finalisation callback)."""
        names = [d for d in os.listdir(self.directory) if d.startswith(f"{step}.orbax-checkpoint-tmp")]
        return os.path.join(self.directory, names[0] if names else str(step))

    def _digest_in_flight(self):
        if self._saving is not None and jax.process_index() == 0:
            write_digest(self._step_dir_being_written(self._saving))

    def latest_step(self):
        """The newest complete checkpoint's step (unverified), or None."""
        return self.manager.latest_step()

    def should_save(self, step: int, total_steps: int) -> bool:
        return step % self.every_steps == 0 or step == total_steps

    def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
        """Starts an (async) save of `state` and the iterator position at `step`; returns whether it saved.

        The caller checks that `state` is finite first (the training loop does, for every save)."""
        self.manager.wait_until_finished()  # the previous save's digest is written before `_saving` moves on
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data_iter=grain.checkpoint.CheckpointSave(data_iter))
        self._saving = step
        saved = self.manager.save(step, args=args, force=force)
        if saved:
            if not self.async_save and jax.process_index() == 0:
                write_digest(os.path.join(self.directory, str(step)))
            self.last_good_step = step
            log.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_state, data_iter):
        """The TrainState at `step`, each leaf in the sharding of `abstract_state`; moves `data_iter` in place.

        `abstract_state`: a pytree of jax.ShapeDtypeStruct with `sharding` set (the shapes of a fresh state)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  data_iter=grain.checkpoint.CheckpointRestore(data_iter))
        try:
            restored = self.manager.restore(step, args=args)
        except Exception as e:  # the message of a shape/structure mismatch is long and does not say what to do
            first = " ".join(str(e).split())[:300]
            raise RuntimeError(
                f"could not restore checkpoint step {step} from {self.directory} ({type(e).__name__}: {first}). It "
                "was probably written with another model/optimizer config: train with the config it was trained "
                "with (config.json in the workdir) or in a fresh --workdir") from e
        log.info("checkpoint: restored step %d from %s", step, self.directory)
        self.last_good_step = step
        return restored["state"]

    def intact_latest_step(self):
        """The newest checkpoint that matches its digest, or None when there is none at all.

        Damaged newer steps are warned about and moved to `workdir/checkpoints.bad/<step>` (process 0), so that
        training can save those steps again and keep-K never counts them. Raises CheckpointIntegrityError when
        step folders exist but none is intact."""
        _sync("stcl_jax checkpoints before verification")  # every process judges the same folders
        step, bad = newest_intact_step(self.directory)
        _sync("stcl_jax checkpoints verified")  # and none is moved before all have looked
        if bad:
            self._quarantine(bad)
        _sync("stcl_jax damaged checkpoints moved")
        if bad:
            self.manager.reload()
            if step is None:
                raise no_intact_error(self.directory, bad)
            log.warning("resuming from step %d, the newest intact checkpoint", step)
        return step

    def _quarantine(self, bad: dict):
        self.manager.wait_until_finished()
        if jax.process_index() == 0:
            target_root = os.path.join(self.workdir, workdir_lib.BAD_CHECKPOINTS)
            os.makedirs(target_root, exist_ok=True)
            for step, reason in bad.items():
                target = os.path.join(target_root, str(step))
                n = 1
                while os.path.exists(target):
                    target, n = os.path.join(target_root, f"{step}.{n}"), n + 1
                shutil.move(os.path.join(self.directory, str(step)), target)
                with open(target + ".reason.txt", "w", encoding="utf-8") as f:
                    f.write(reason + "\n")
                log.warning("moved the damaged checkpoint step %d to %s", step, target)

    def last_good_description(self) -> str:
        if self.last_good_step is None:
            return "there is no earlier checkpoint of this run"
        return f"the last good checkpoint is step {self.last_good_step} in {self.directory}"

    def wait_until_finished(self):
        self.manager.wait_until_finished()

    def close(self):
        """Waits for the save in flight and closes the manager (again: a no-op)."""
        if self.manager is not None:
            self.manager.wait_until_finished()
            self.manager.close()
            self.manager = None


def _sync(name: str):
    """A barrier over all processes (nothing with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


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
