"""Checks of a training config before any data or model work, and of a resume against the workdir's config.

`validate(config)`: every field whose bad value would otherwise fail deep inside jax or the data pipeline
(sizes, frame counts, ranges, probabilities, cadences) -> one ValueError naming the field(s).
`check_val_split(config)`: the build at `config.data.dir` has `config.data.val_split` (when training evaluates).

Resuming (`record_config`): the new config is compared with `workdir/config.json` before anything is written.
A change of what the checkpoint or the data iterator holds (`REFUSED`: the model, crop size, frames, batch,
seed, the training sources, the optimizer's structure) is refused in one line naming the fields; any other
change (more steps, logging, evaluation, checkpoint cadence, learning rate, ...) is applied, logged and appended
to `workdir/config_history.jsonl` ({"time", "changes": {field: [old, new]}}); config.json is then rewritten.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

from stcl_jax import workdir as workdir_lib
from stcl_jax.files import atomic_write_text

log = logging.getLogger("stcl_jax.train")

# field (or "prefix.") -> why a resume may not change it
REFUSED = {
    "model.": "the architecture the checkpoint holds",
    "data.crop_size": "the shape of the compiled step's batch",
    "data.num_frames": "the shape of the compiled step's batch",
    "global_batch_size": "the batch and the data iterator's position",
    "data.device_normalize": "the batch layout",
    "seed": "the data order the iterator position refers to",
    "data.train_split": "the records the iterator position refers to",
    "data.mixture": "the sources the iterator position refers to",
    "data.pseudo_dir": "the sources the iterator position refers to",
    "data.pseudo_split": "the sources the iterator position refers to",
    "data.pseudo_ratio": "the sources the iterator position refers to",
    "data.label_map": "the label space the classifier was trained on",
    "synthetic.": "the generated data already in the workdir",
}


# ------------------------------------------------------------------------------------------------- validation
def _pair(value, field, problems, *, positive=True):
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(isinstance(v, int) for v in value):
        problems.append(f"{field}={tuple(value) if isinstance(value, list) else value!r} must be 2 integers (h, w)")
    elif positive and min(value) <= 0:
        problems.append(f"{field}={tuple(value)} must be positive")


def _number(value, field, problems, *, low=None, high=None, low_open=False, high_open=False, integer=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        problems.append(f"{field}={value!r} must be a finite {'integer' if integer else 'number'}")
        return
    if low is not None and (value < low or (low_open and value == low)):
        problems.append(f"{field}={value!r} must be {'>' if low_open else '>='} {low}")
    if high is not None and (value > high or (high_open and value == high)):
        problems.append(f"{field}={value!r} must be {'<' if high_open else '<='} {high}")


def _data_problems(d, problems):
    _pair(d.crop_size, "config.data.crop_size", problems)
    _pair(d.base_size, "config.data.base_size", problems)
    _number(d.num_frames, "config.data.num_frames", problems, low=1, integer=True)
    sr = tuple(d.scale_range) if isinstance(d.scale_range, (tuple, list)) else d.scale_range
    if not isinstance(sr, tuple) or len(sr) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in sr):
        problems.append(f"config.data.scale_range={sr!r} must be 2 positive numbers (lo, hi)")
    elif sr[0] > sr[1]:
        problems.append(f"config.data.scale_range={sr} must have lo <= hi")
    ro = tuple(d.ref_offsets) if isinstance(d.ref_offsets, (tuple, list)) else d.ref_offsets
    if not isinstance(ro, tuple) or len(ro) != 2 or not all(isinstance(v, int) for v in ro) or ro[0] > ro[1]:
        problems.append(f"config.data.ref_offsets={ro!r} must be 2 integers lo <= hi")
    elif isinstance(d.num_frames, int) and d.num_frames > 1 and ro == (0, 0):
        problems.append("config.data.ref_offsets=(0, 0) leaves no reference frame for num_frames > 1")
    _number(d.flip_prob, "config.data.flip_prob", problems, low=0, high=1)
    _number(d.cat_max_ratio, "config.data.cat_max_ratio", problems, low=0, high=1, low_open=True)
    for name in ("mean", "std"):
        v = tuple(d[name]) if isinstance(d[name], (tuple, list)) else d[name]
        if not isinstance(v, tuple) or len(v) != 3 or not all(isinstance(x, (int, float)) for x in v):
            problems.append(f"config.data.{name}={v!r} must be 3 numbers (R, G, B)")
        elif name == "std" and min(v) <= 0:
            problems.append(f"config.data.std={v} must be positive")
    _number(d.ignore_index, "config.data.ignore_index", problems, low=0, high=255, integer=True)
    _number(d.worker_count, "config.data.worker_count", problems, low=0, integer=True)
    _number(d.pseudo_ratio, "config.data.pseudo_ratio", problems, low=0, high=1, high_open=True)
    total = float(d.pseudo_ratio) if isinstance(d.pseudo_ratio, (int, float)) else 0.0
    for name, m in d.mixture.items():
        _number(m.ratio, f"config.data.mixture.{name}.ratio", problems, low=0, high=1, low_open=True,
                high_open=True)
        total += float(m.ratio) if isinstance(m.ratio, (int, float)) else 0.0
    if total >= 1:
        problems.append(f"config.data.pseudo_ratio + the mixture ratios = {total:g} must be < 1 (config.data.dir "
                        "gets the rest)")


def _training_problems(c, problems):
    for name in ("total_steps", "global_batch_size", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        _number(c[name], f"config.{name}", problems, low=1, integer=True)
    _number(c.eval_every_steps, "config.eval_every_steps", problems, low=0, integer=True)
    o = c.optim
    _number(o.learning_rate, "config.optim.learning_rate", problems, low=0, low_open=True)
    _number(o.warmup_steps, "config.optim.warmup_steps", problems, low=0, integer=True)
    for name in ("b1", "b2"):
        _number(o[name], f"config.optim.{name}", problems, low=0, high=1, high_open=True)
    for name in ("eps", "weight_decay", "grad_clip_norm", "min_lr"):
        _number(o[name], f"config.optim.{name}", problems, low=0)
    lc = c.loss
    for name in ("ce_weight", "aux_weight", "stcl_weight"):
        _number(lc[name], f"config.loss.{name}", problems, low=0)
    _number(lc.temperature, "config.loss.temperature", problems, low=0, low_open=True)
    _number(lc.stcl_pool, "config.loss.stcl_pool", problems, low=1, integer=True)
    _number(lc.stcl_max_anchors, "config.loss.stcl_max_anchors", problems, low=0, integer=True)
    ev = c.eval
    if ev.mode not in ("slide", "whole"):
        problems.append(f"config.eval.mode={ev.mode!r} must be 'slide' or 'whole'")
    _pair(ev.crop, "config.eval.crop", problems)
    _pair(ev.stride, "config.eval.stride", problems)
    _number(ev.max_videos, "config.eval.max_videos", problems, low=0, integer=True)


def validate(config) -> None:
    """Raises ValueError naming every bad field of a training config (one line)."""
    problems = []
    _data_problems(config.data, problems)
    _training_problems(config, problems)
    if "model" in config:
        _number(config.model.num_classes, "config.model.num_classes", problems, low=1, integer=True)
    if problems:
        raise ValueError("; ".join(problems))


def evaluates(config) -> bool:
    return bool(config.eval_every_steps or config.eval.at_end or config.eval.rerun)


def check_val_split(config) -> None:
    """ValueError when training would evaluate on a split the build at config.data.dir does not have."""
    if not evaluates(config):
        return
    from stcl_jax.data.records import resolve_dataset_dir

    with open(os.path.join(resolve_dataset_dir(config.data.dir), "dataset_info.json"), encoding="utf-8") as f:
        splits = sorted(s["name"] for s in json.load(f).get("splits", []))
    if config.data.val_split not in splits:
        raise ValueError(f"config.data.val_split={config.data.val_split!r} is not in the build at {config.data.dir} "
                         f"(it has {splits}); set it to one of those, or config.eval.at_end=False and "
                         "config.eval_every_steps=0 to train without validation")


# ------------------------------------------------------------------------------------------------- resume
def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_as_json(config) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _refusal(field: str, old, new) -> str | None:
    if field == "optim.grad_clip_norm":  # clipping on/off changes the optimizer state's structure
        on = lambda v: bool(v) and v > 0  # noqa: E731
        return "the optimizer state's structure (clipping on/off)" if on(old) != on(new) else None
    for key, why in REFUSED.items():
        if field == key or (key.endswith(".") and field.startswith(key)) or field.startswith(key + "."):
            return why
    return None


def changes(old: dict, new: dict) -> tuple[dict, dict]:
    """({field: [old, new]} refused, {field: [old, new]} allowed) between two config.json dicts.

    A field only one side has (a field added or removed by another code version) is an allowed change."""
    a, b = flatten(old), flatten(new)
    refused, allowed = {}, {}
    for field in sorted(set(a) | set(b)):
        if field in a and field in b and a[field] == b[field]:
            continue
        pair = [a.get(field, "<absent>"), b.get(field, "<absent>")]
        if field in a and field in b and _refusal(field, *pair):
            refused[field] = pair
        else:
            allowed[field] = pair
    return refused, allowed


def check_resume(config, workdir: str) -> dict:
    """The allowed changes against `workdir/config.json` ({} for a new workdir); ValueError naming the refused
    fields. Reads only: nothing in the workdir changes."""
    path = os.path.join(workdir, workdir_lib.CONFIG)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            old = json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}): restore it, or train in a fresh --workdir") from e
    refused, allowed = changes(old, config_as_json(config))
    if refused:
        listed = ", ".join(f"{k} {v[0]!r} -> {v[1]!r}" for k, v in refused.items())
        why = "; ".join(sorted({_refusal(k, *v) for k, v in refused.items()}))
        raise ValueError(f"cannot resume {workdir} with a changed {listed} (it fixes {why}); use the config in "
                         f"{path} for this workdir, or a fresh --workdir for the new one")
    return allowed


def record_config(config, workdir: str, allowed: dict, resumed: bool) -> None:
    """Writes config.json and appends the change (or the start) to config_history.jsonl (process 0 only)."""
    import jax

    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    if resumed and not allowed:
        return
    if allowed:
        log.warning("resuming with a changed config: %s", ", ".join(f"{k} {v[0]!r} -> {v[1]!r}"
                                                                 for k, v in allowed.items()))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": "resume" if resumed else "start",
             "changes": allowed}
    with open(os.path.join(workdir, workdir_lib.CONFIG_HISTORY), "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    atomic_write_text(os.path.join(workdir, workdir_lib.CONFIG), config.to_json_best_effort(indent=2, sort_keys=True))
