"""What every importer shares: the conversion report, writing converted tensors into a variables tree, and
completing it against the model (shape checks, fills for what checkpoints of a kind never hold)."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import numpy as np

from stcl_jax.convert import mapping
from stcl_jax.convert.tensors import load_state_dict


@dataclasses.dataclass
class ConversionReport:
    source: str
    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    ignored: list[str] = dataclasses.field(default_factory=list)
    interpolated: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.source}: {len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
                 f"{len(self.unused)} unused, {len(self.ignored)} derived buffers ignored, "
                 f"{len(self.interpolated)} relative-position tables interpolated"]
        lines += [f"  missing: {k}" for k in self.missing]
        lines += [f"  unused: {k}" for k in self.unused]
        lines += [f"  interpolated: {k}" for k in self.interpolated]
        return "\n".join(lines)


def set_path(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    if leaf in tree:
        raise ValueError(f"two checkpoint tensors map to {path}")
    tree[leaf] = value


def param_leaf(module: str, kind: str, value: np.ndarray) -> tuple[str, str]:
    """(collection, leaf name) for a PyTorch parameter `kind` of our module path."""
    if kind == "running_mean":
        return "batch_stats", "mean"
    if kind == "running_var":
        return "batch_stats", "var"
    if kind == "bias":
        return "params", "bias"
    if kind == "weight":
        return "params", "kernel" if value.ndim > 1 else "scale"
    if kind == "relative_position_bias_table":
        return "params", kind
    raise ValueError(f"unexpected parameter kind {kind!r} for {module}")


def aux_head_overrides(aux: dict, stage1_channels: int) -> dict:
    """model_config overrides read off an FCN auxiliary head's parameters (stage i has 2**i x stage 1's width)."""
    in_ch = aux["convs_0"]["conv"]["kernel"].shape[2]
    return {"aux.channels": aux["conv_seg"]["kernel"].shape[2],
            "aux.num_convs": len([k for k in aux if k.startswith("convs_")]),
            "aux.in_index": int(round(math.log2(in_ch / stage1_channels)))}


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def complete(out: dict, cfg, source: str, report: ConversionReport, full: bool | None = None) -> dict:
    """Checks shapes against the model, fills what checkpoints of this kind never hold, reports the rest."""
    import jax
    import jax.numpy as jnp

    from stcl_jax.models import build_segmenter

    model = build_segmenter(cfg)
    rngs = {n: jax.random.key(0) for n in ("params", "dropout", "drop_path")}
    abstract = jax.eval_shape(model.init, rngs, jnp.zeros((1, 64, 64, 3), jnp.float32))
    full = mapping.SOURCES[source][2] if full is None else full
    missing = []
    for collection in ("params", "batch_stats"):
        expected = flatten(abstract[collection])
        got = flatten(out[collection])
        for path, value in got.items():
            if path not in expected:
                raise ValueError(f"{source}: converted tensor {collection}/{path} has no place in the model")
            if tuple(value.shape) != tuple(expected[path].shape):
                raise ValueError(f"{source}: {collection}/{path} has shape {value.shape} in the checkpoint but "
                                 f"the model expects {expected[path].shape}")
        for path, spec in expected.items():
            if path in got or (not full and not path.startswith("backbone/")):
                continue
            missing.append((collection, path, spec))
    fresh = None
    for collection, path, spec in missing:
        if re.fullmatch(r"backbone/norm[0-3]/(scale|bias)", path):
            value, how = (np.ones if path.endswith("scale") else np.zeros)(spec.shape, np.float32), "LayerNorm init"
        else:
            if fresh is None:
                fresh = fresh_init(model, cfg, [p for _, p, _ in missing])
            value, how = np.asarray(flatten(fresh[collection])[path]), "random init, seed 0"
        set_path(out[collection], path, value)
        report.missing.append(f"{collection}/{path} ({how})")
    if not full:
        out.pop("batch_stats")
        out["batch_stats"] = {}
    return out


def fresh_init(model, cfg, paths: list[str]) -> dict:
    """Initial values for missing leaves; only the projection head (cheap) unless something else is missing."""
    import jax
    import jax.numpy as jnp

    from stcl_jax.models.config import stage_channels
    from stcl_jax.models.heads import ProjectionHead

    rngs = {n: jax.random.key(0) for n in ("params", "dropout", "drop_path")}
    if all(p.startswith("projection_head/") or p.startswith("backbone/norm") for p in paths):
        feature = cfg.projection.feature
        width = cfg.decoder.channels if feature == "fused" else stage_channels(cfg)[int(feature[-1]) - 1]
        head = ProjectionHead(cfg.projection.dim).init(rngs, jnp.zeros((1, 1, 1, width), jnp.float32))
        return {c: {"projection_head": v} for c, v in head.items()}
    return jax.jit(model.init)(rngs, jnp.zeros((1, 64, 64, 3), jnp.float32))


def load_source(path_or_state_dict):
    if isinstance(path_or_state_dict, (str, bytes)) or hasattr(path_or_state_dict, "__fspath__"):
        return load_state_dict(str(path_or_state_dict))
    return path_or_state_dict, {}
