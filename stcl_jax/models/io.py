"""Params-only model files: an Orbax checkpoint of `{"params", "batch_stats"}` plus `model_config.json`.

Layout of `dir`:
  dir/variables/        Orbax StandardCheckpointer tree {"params": ..., "batch_stats": ...}
  dir/model_config.json the model ConfigDict (`model_config(...)`), readable by `config_from_dict`

Written by `python -m stcl_jax.convert` and `python -m stcl_jax.export`; read by training (`config.init_from`),
evaluation and pseudo-labelling. Backbone-only imports hold only `params/backbone` (and no batch_stats).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from stcl_jax.models.config import config_from_dict

VARIABLES_DIR = "variables"
CONFIG_FILE = "model_config.json"


def save_variables(directory: str, variables: dict, model_config) -> str:
    """Writes `variables` ({"params", "batch_stats"}) and `model_config` under `directory` (replacing them)."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    tree = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    tree = jax.tree.map(np.asarray, tree)
    if not jax.tree.leaves(tree["batch_stats"]):
        tree.pop("batch_stats")  # Orbax refuses empty subtrees; load_variables restores it as {}.
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.join(directory, VARIABLES_DIR), tree, force=True)
    checkpointer.wait_until_finished()
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    return directory


def load_variables(directory: str) -> tuple[dict, object]:
    """Reads what `save_variables` wrote: ({"params", "batch_stats"} as NumPy arrays, locked model ConfigDict)."""
    directory = os.path.abspath(directory)
    cfg_path = os.path.join(directory, CONFIG_FILE)
    var_path = os.path.join(directory, VARIABLES_DIR)
    for path in (cfg_path, var_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: {directory} is not a params-only model directory "
                                    "(written by `python -m stcl_jax.convert` or `python -m stcl_jax.export`)")
    with open(cfg_path) as f:
        try:
            cfg = config_from_dict(json.load(f))
        except (ValueError, KeyError) as e:
            raise ValueError(f"{cfg_path}: invalid model config: {e}") from e
    tree = ocp.StandardCheckpointer().restore(var_path)
    tree = jax.tree.map(np.asarray, dict(tree))
    return {"params": tree["params"], "batch_stats": tree.get("batch_stats", {})}, cfg
