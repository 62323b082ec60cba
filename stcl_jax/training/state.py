"""The train state (params, batch_stats, optimizer state, step, RNG), created directly in its shardings.

Parameters and optimizer state are float32 whatever the compute dtype (`model_config.dtype` only changes the
activations). `rng` is the run's base key: step s uses `fold_in(rng, s)`, so a resumed run draws the same
dropout / drop-path masks as an uninterrupted one.
"""

import logging
import re
from typing import Any, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax.training import mesh as mesh_lib
from stcl_jax.training.optim import path_str

log = logging.getLogger("stcl_jax.train")


@flax.struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: the number of updates done
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array           # uint32 (2,) raw base key


def init_fn(model, tx, image_shape):
    """A function rng -> TrainState that initialises the model on zeros of `image_shape` (1, H, W, 3)."""

    def init(rng):
        k_params, k_dropout, k_drop_path, k_run = jax.random.split(rng, 4)
        variables = model.init({"params": k_params, "dropout": k_dropout, "drop_path": k_drop_path},
                               jnp.zeros(image_shape, jnp.float32), train=False)
        params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), variables["params"])
        batch_stats = variables.get("batch_stats", {})
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                          opt_state=tx.init(params), rng=k_run)

    return init


def abstract_state_and_shardings(model, tx, image_shape, mesh, mesh_cfg):
    """(abstract TrainState of ShapeDtypeStructs, matching NamedShardings) without allocating anything."""
    init = init_fn(model, tx, image_shape)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = mesh_lib.state_shardings(abstract, mesh, fsdp=mesh_cfg.fsdp, min_size=mesh_cfg.fsdp_min_size)
    return abstract, shardings


def create_train_state(model, tx, image_shape, seed: int, shardings) -> TrainState:
    """A fresh TrainState, initialised by a jitted function that writes every leaf into its sharding."""
    init = init_fn(model, tx, image_shape)
    return jax.jit(init, out_shardings=shardings)(jax.random.PRNGKey(seed))


def param_count(params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


def merge_pretrained(state: TrainState, loaded: dict, tx, shardings, source: str = "",
                     reset_patterns: Sequence[str] = ()) -> tuple[TrainState, dict]:
    """Copies the leaves of `loaded` ({"params", "batch_stats"}) that match `state` by path and shape.

    Returns the new state (optimizer state re-initialised for the new parameters) and a report
    {"loaded": [...], "missing": [...], "unused": [...], "mismatched": [...], "reset": [...]} of "/"-joined
    paths: `missing` are model leaves the file lacks (kept at their initial values), `unused` are file leaves the
    model lacks, `reset` are leaves matching one of the `reset_patterns` regexes whose shape differs from the
    file's (a classifier trained on another label set: re-initialised), `mismatched` are the other shape
    differences, "path: file shape vs model shape" (kept at their initial values).
    """
    report = {"loaded": [], "missing": [], "unused": [], "mismatched": [], "reset": []}
    resets = [re.compile(p) for p in reset_patterns]
    merged = {}
    for group in ("params", "batch_stats"):
        ours = getattr(state, group)
        theirs = {path_str(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded.get(group, {}))}
        seen = set()

        def pick(path, leaf, group=group, theirs=theirs, seen=seen):
            name = path_str(path)
            full = f"{group}/{name}"
            if name not in theirs:
                report["missing"].append(full)
                return leaf
            seen.add(name)
            value = np.asarray(theirs[name])
            if value.shape != leaf.shape:
                kind = "reset" if any(r.search(full) for r in resets) else "mismatched"
                report[kind].append(f"{full}: {value.shape} in {source or 'the file'} vs {leaf.shape}")
                return leaf
            report["loaded"].append(full)
            value = value.astype(leaf.dtype)
            return jax.make_array_from_callback(value.shape, leaf.sharding, lambda idx: value[idx])

        merged[group] = jax.tree_util.tree_map_with_path(pick, ours)
        report["unused"].extend(f"{group}/{k}" for k in sorted(set(theirs) - seen))
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(merged["params"])
    new = state.replace(params=merged["params"], batch_stats=merged["batch_stats"], opt_state=opt_state)
    log.info("init_from %s: %d leaves loaded, %d re-initialised, %d missing, %d unused, %d shape mismatches", source,
             len(report["loaded"]), len(report["reset"]), len(report["missing"]), len(report["unused"]),
             len(report["mismatched"]))
    for item in report["reset"]:
        log.info("init_from %s: re-initialised (reset) %s", source, item)
    for kind in ("missing", "unused", "mismatched"):
        for item in report[kind]:
            log.warning("init_from %s: %s %s", source, kind, item)
    return new, report
