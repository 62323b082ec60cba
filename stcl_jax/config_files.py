"""Config files: load a `configs/x.py[:arg]` by path, and apply dotted overrides to a locked config.

Used by the sweep, evaluation and prediction command lines (training loads its `--config` through absl's
`config_flags`, which does the same import by path).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib

import ml_collections


def split_config_spec(spec: str) -> tuple[str, str | None]:
    """'configs/demo.py:runlocal' -> ('configs/demo.py', 'runlocal'); no ':' -> (path, None)."""
    path, _, arg = spec.partition(":")
    return path, (arg or None)


def load_config_module(path: str):
    """Imports a config file by path (configs/ is not a package), as absl's config_flags does."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path!r} does not exist")
    name = "stcl_config_" + pathlib.Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} defines no get_config(arg)")
    return module


def apply_overrides(config, overrides: dict):
    """A copy of the (locked) `config` with dotted `overrides` set; an unknown field raises KeyError naming it."""
    config = ml_collections.ConfigDict(config.to_dict(), type_safe=config.is_type_safe)
    for field, value in overrides.items():
        *parents, leaf = field.split(".")
        node = config
        for i, part in enumerate(parents):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise KeyError(f"override {field!r}: config has no section {'.'.join(parents[:i + 1])!r}")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"override {field!r}: config has no field {leaf!r} in "
                           f"{'.'.join(parents) or 'the top level'} (fields: {sorted(node.keys())})")
        old = node[leaf]
        if isinstance(old, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            node[leaf] = value
        except TypeError as e:
            raise TypeError(f"override {field!r}={value!r}: {e}") from None
    config.lock()
    return config


def parse_override(text: str) -> tuple[str, object]:
    """'loss.temperature=0.1' -> ('loss.temperature', 0.1); values are Python literals or else strings."""
    field, sep, raw = text.partition("=")
    if not sep or not field:
        raise ValueError(f"--override wants FIELD=VALUE, got {text!r}")
    try:
        return field, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return field, raw


def load_config(spec: str):
    """`configs/x.py[:arg]` -> the locked ConfigDict of its get_config(arg)."""
    path, arg = split_config_spec(spec)
    return load_config_module(path).get_config(arg)
