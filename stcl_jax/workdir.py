"""The training workdir: its layout, its checkpoints' listing and integrity, and loading trained variables.

    workdir/
      config.json               the resolved training config (stcl_jax.training.config_check)
      config_history.jsonl      the changes a resume made to it
      checkpoints/<step>/       Orbax: state/, data_iter/, sha256.json (stcl_jax.training.checkpoint)
      checkpoints.bad/<step>/   damaged checkpoints moved aside, with <step>.reason.txt
      checkpoint_integrity.json steps saved before digests existed
      metrics.jsonl  train.log  tensorboard/   (stcl_jax.training.logging)
      init_from_report.json     what `config.init_from` loaded
      data/raw, data/built      the generated dataset of a config with a `synthetic` block

Integrity: a checkpoint's `sha256.json` holds the size and SHA-256 of every file under its `state/` and
`data_iter/`; `check_step` verifies them, `newest_intact_step` falls back to the newest step that passes.
Reading trained variables (`restore_variables`, `load_trained_variables`) is for evaluation, export, prediction
and training's `config.init_from`; only `params` and `batch_stats` are read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np

from stcl_jax.models.config import config_from_dict
from stcl_jax.models.io import CONFIG_FILE as MODEL_CONFIG_FILE, load_variables

log = logging.getLogger("stcl_jax")

CONFIG = "config.json"
CONFIG_HISTORY = "config_history.jsonl"
CHECKPOINTS = "checkpoints"
BAD_CHECKPOINTS = "checkpoints.bad"
METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"
INIT_FROM_REPORT = "init_from_report.json"
GENERATED_DATA = "data"
DIGEST = "sha256.json"
# next to checkpoints/ (Orbax's folder holds step folders only): {"version": 1, "undigested_steps": [...]}
INTEGRITY = "checkpoint_integrity.json"
ITEMS = ("state", "data_iter")
_CHUNK = 1 << 22


def checkpoints_dir(workdir: str) -> str:
    return os.path.join(workdir, CHECKPOINTS)


# ------------------------------------------------------------------------------------------------ digests --
class CheckpointIntegrityError(RuntimeError):
    """No checkpoint of the workdir passes its digest check (the message lists each bad step and why)."""


# ------------------------------------------------------------------------------------------------ digests
def _files(step_dir: str) -> list[str]:
    """The files of the items of a step folder, relative to it, sorted."""
    out = []
    for item in ITEMS:
        for root, _, files in os.walk(os.path.join(step_dir, item)):
            out += [os.path.relpath(os.path.join(root, f), step_dir) for f in files]
    return sorted(out)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digests(step_dir: str) -> dict:
    """{relative path: [size, sha256]} of every file under the step's state/ and data_iter/."""
    return {rel: [os.path.getsize(os.path.join(step_dir, rel)), _sha256(os.path.join(step_dir, rel))]
            for rel in _files(step_dir)}


def write_digest(step_dir: str) -> None:
    digests = file_digests(step_dir)
    tmp = os.path.join(step_dir, DIGEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"version": 1, "files": digests}, f, indent=0)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(step_dir, DIGEST))


def check_step(directory: str, step: int) -> str | None:
    """None when checkpoint `step` in `directory` matches its digest, else why not (one phrase).

    A step listed in `directory/../checkpoint_integrity.json` as saved before digests existed passes unchecked."""
    step_dir = os.path.join(directory, str(step))
    path = os.path.join(step_dir, DIGEST)
    if not os.path.isfile(path):
        if step in _read_integrity(directory).get("undigested_steps", []):
            return None
        return f"no {DIGEST} (the save did not finish, or the folder was emptied or replaced)"
    try:
        with open(path, encoding="utf-8") as f:
            expected = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"{DIGEST} unreadable ({e})"
    present = set(_files(step_dir))
    missing = sorted(set(expected) - present)
    if missing:
        return f"{len(missing)} file(s) missing, e.g. {missing[0]}"
    extra = sorted(present - set(expected))
    if extra:
        return f"{len(extra)} file(s) not in the digest, e.g. {extra[0]}"
    for rel, (size, sha) in expected.items():
        full = os.path.join(step_dir, rel)
        if os.path.getsize(full) != size:
            return f"{rel} is {os.path.getsize(full)} bytes, {size} when saved (truncated or appended)"
        if _sha256(full) != sha:
            return f"{rel} differs from the saved contents (sha256 mismatch)"
    return None


def integrity_path(directory: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(directory)), INTEGRITY)


def _read_integrity(directory: str) -> dict:
    try:
        with open(integrity_path(directory), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def step_folders(directory: str) -> list[int]:
    """Steps of the (renamed, so complete as far as Orbax knows) step folders in `directory`, ascending."""
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def newest_intact_step(directory: str, steps=None) -> tuple[int | None, dict]:
    """(the newest step that passes `check_step`, {newer bad step: reason}); warns naming each bad step."""
    bad = {}
    for step in reversed(step_folders(directory) if steps is None else sorted(steps)):
        reason = check_step(directory, step)
        if reason is None:
            return step, bad
        log.warning("checkpoint step %d in %s is damaged: %s; trying an older one", step, directory, reason)
        bad[step] = reason
    return None, bad


def no_intact_error(directory: str, bad: dict) -> CheckpointIntegrityError:
    listed = "; ".join(f"step {s}: {r}" for s, r in sorted(bad.items()))
    return CheckpointIntegrityError(f"no intact checkpoint in {directory} ({listed}); move the folder away to "
                                    "start over, or restore a backup of it")


# ------------------------------------------------------------------------------------------ trained variables --
def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the complete checkpoints in `workdir/checkpoints` (Orbax renames a step dir only when done)."""
    directory = checkpoints_dir(workdir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} has no checkpoints/ folder: is it a training workdir "
                                "(python -m stcl_jax.train --workdir ...)?")
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state")))


def training_model_config(workdir: str):
    """The model config of the run, from `workdir/config.json` (written by training)."""
    path = os.path.join(workdir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: training writes the resolved config there; without it the "
                                "model architecture of the checkpoint is unknown")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if "model" not in config:
        raise ValueError(f"{path} has no 'model' section")
    return config_from_dict(config["model"])


def restore_variables(workdir: str, step: int | None = None) -> tuple[dict, object, int]:
    """({"params", "batch_stats"} as NumPy, model config, step) of `workdir`'s checkpoint `step` (default newest).

    Only those two subtrees are read (Orbax partial restore), so the optimizer state costs no memory."""
    import orbax.checkpoint as ocp

    workdir = os.path.abspath(workdir)
    steps = checkpoint_steps(workdir)
    directory = checkpoints_dir(workdir)
    if not steps:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no complete checkpoint")
    if step is None:  # the newest intact one (a damaged newer one is warned about, not moved: this only reads)
        step, bad = newest_intact_step(directory, steps)
        if step is None:
            raise no_intact_error(directory, bad)
    elif step not in steps:
        raise ValueError(f"--step {step}: {workdir}/checkpoints has steps {steps}")
    elif reason := check_step(directory, step):
        raise ValueError(f"--step {step}: the checkpoint in {directory} is damaged: {reason}")
    model_cfg = training_model_config(workdir)
    path = os.path.join(checkpoints_dir(workdir), str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    if "params" not in tree:
        raise ValueError(f"{path}: no 'params' in the checkpoint (top-level items: {sorted(tree)})")
    wanted = {k: tree[k] for k in ("params", "batch_stats") if k in tree and jax.tree.leaves(tree[k])}
    item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                       partial_restore=True))
    variables = jax.tree.map(np.asarray, {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})})
    bad = [leaf for leaf in jax.tree.leaves(variables) if np.issubdtype(leaf.dtype, np.inexact)
           and not np.isfinite(leaf).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} of {len(jax.tree.leaves(variables))} arrays hold NaN or inf (a diverged "
                         "run); use an earlier --step")
    return variables, model_cfg, step


def load_trained_variables(path: str, what: str = "path") -> tuple[dict, object]:
    """({"params", "batch_stats"}, model config) of a params-only export (model_config.json) or of the newest
    checkpoint of a training workdir (checkpoints/); `what` names the flag / field in the error."""
    if os.path.isfile(os.path.join(path, MODEL_CONFIG_FILE)):
        return load_variables(path)
    if os.path.isdir(checkpoints_dir(path)):
        variables, model_cfg, step = restore_variables(path)
        log.info("%s: the training workdir's checkpoint at step %d (params and batch_stats only)", path, step)
        return variables, model_cfg
    raise FileNotFoundError(f"{what} {path}: neither a params-only export (model_config.json, from "
                            "`python -m stcl_jax.export`) nor a training workdir (checkpoints/)")
