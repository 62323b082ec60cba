"""Import PyTorch Swin / UperNet weights into stcl_jax variables, offline.

    variables, model_config = stcl_jax.convert.from_hf_upernet("path/to/save_pretrained_dir")  # or a state dict
    model = stcl_jax.models.build_segmenter(model_config)
    logits = model.apply(variables, images, train=False)["logits"]

`from_hf_upernet` (and `from_mmseg_upernet`) give full segmenter variables; the projection head, which no
public checkpoint has, is freshly initialised (seed 0) and reported as missing. `from_hf_swin`, `from_timm_swin`
and `from_swin_official` are backbone-only: they return `{"params": {"backbone": ...}}` (the per-stage output
norms `norm0..3`, absent from classification checkpoints, set to the LayerNorm init) and a model config whose
`swin` group matches the checkpoint; merge them into a segmenter (training's `init_from` does).

ResNet-50 / ResNeSt-101 (timm, mmseg): `from_timm_resnet`, `from_mmseg_resnet`, `from_mmseg_upernet_resnet`
(stcl_jax/convert/cnn.py); those backbone-only imports keep the BatchNorm running statistics.

CSWin Transformer (official classification checkpoints or segmentation backbone): `from_cswin_official`
(stcl_jax/convert/cswin.py), backbone-only.

Every import logs its report: keys loaded, missing (and how filled), unused, ignored derived buffers, and the
relative-position tables interpolated when `window_size` differs from the checkpoint's (bicubic, as mmseg).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Any

import numpy as np

from stcl_jax.convert import mapping
from stcl_jax.convert.tensors import (conv_kernel, linear_kernel, load_state_dict, resize_relative_position_table,
                                      to_numpy_state_dict)
from stcl_jax.models.config import model_config as make_model_config
from stcl_jax.models.config import size_name

log = logging.getLogger(__name__)
SOURCES = tuple(mapping.SOURCES)


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


def _set(tree: dict, path: str, value) -> None:
    *parents, leaf = path.split("/")
    for p in parents:
        tree = tree.setdefault(p, {})
    if leaf in tree:
        raise ValueError(f"two checkpoint tensors map to {path}")
    tree[leaf] = value


def _leaf(module: str, kind: str, value: np.ndarray) -> tuple[str, str]:
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

def convert_state_dict(state_dict, source: str, *, window_size: int | None = None,
                       num_classes: int | None = None, hf_config: dict | None = None):
    """(variables, model_config, ConversionReport) from a PyTorch state dict of `source` (see SOURCES)."""
    if source not in mapping.SOURCES:
        raise ValueError(f"source {source!r} unknown: expected one of {SOURCES}")
    sd = to_numpy_state_dict(state_dict)
    report = ConversionReport(source)
    timm_layout = source == "timm-swin" and mapping.timm_downsample_at_stage_start(sd)
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    parts: dict[str, dict[int, np.ndarray]] = {}
    for key, value in sd.items():
        if mapping.IGNORED.search(key):
            report.ignored.append(key)
            continue
        if key.endswith("relative_position_bias_table"):
            module, kind = key.rsplit(".", 1)
            target = mapping.rename(source, key, timm_layout=timm_layout)
            target = target and target.rsplit("/", 1)[0]
        else:
            module, _, kind = key.rpartition(".")
            target = mapping.rename(source, module, timm_layout=timm_layout)
        if target is None or kind not in ("weight", "bias", "running_mean", "running_var",
                                          "relative_position_bias_table"):
            report.unused.append(key)
            continue
        target, _, part = target.partition("#")
        collection, leaf = _leaf(target, kind, value)
        if value.ndim == 4:
            value = conv_kernel(value)
        elif value.ndim == 2 and leaf == "kernel" and not part:
            value = linear_kernel(value)
        if part:  # one of q/k/v: fused below
            parts.setdefault(f"{target}/{leaf}", {})[int(part)] = value
        else:
            _set(out[collection], f"{target}/{leaf}", value)
        report.loaded.append(key)
    for path, pieces in parts.items():
        if sorted(pieces) != [0, 1, 2]:
            raise ValueError(f"{source}: {path} needs query, key and value tensors; got parts {sorted(pieces)}")
        fused = np.concatenate([pieces[i] for i in range(3)], axis=0)
        _set(out["params"], path, linear_kernel(fused) if fused.ndim == 2 else fused)
    if "backbone" not in out["params"]:
        raise ValueError(f"no Swin backbone tensors recognised as {source!r} (first keys: {list(sd)[:5]}); "
                         f"is --from right? sources: {SOURCES}")

    cfg = _infer_config(out["params"], source, num_classes, hf_config or {})
    checkpoint_window = cfg.swin.window_size
    if window_size is not None and window_size != checkpoint_window:
        _resize_tables(out["params"]["backbone"], window_size, report)
        log.warning("%s: relative-position bias tables interpolated (bicubic) from window %d to window %d",
                    source, checkpoint_window, window_size)
        cfg.swin.window_size = window_size
    variables = _complete(out, cfg, source, report)
    log.info("%s", report)
    return variables, cfg, report


def _stages(backbone: dict) -> list[dict]:
    stages = [backbone.get(f"layers_{i}") for i in range(4)]
    if any(s is None for s in stages):
        raise ValueError(f"checkpoint has stages {sorted(k for k in backbone if k.startswith('layers_'))}: "
                         "a Swin backbone needs 4 (layers_0..layers_3)")
    return stages


def _infer_config(params: dict, source: str, num_classes, hf_config: dict):
    """A model config matching the tensor shapes of the converted checkpoint."""
    bb = params["backbone"]
    proj = bb["patch_embed"]["proj"]["kernel"]
    stages = _stages(bb)
    embed_dim, patch = proj.shape[-1], proj.shape[0]
    depths = tuple(len([k for k in s if k.startswith("blocks_")]) for s in stages)
    first = [s["blocks_0"]["attn"] for s in stages]
    heads = tuple(a["relative_position_bias_table"].shape[1] for a in first)
    window = (math.isqrt(first[0]["relative_position_bias_table"].shape[0]) + 1) // 2
    mlp = stages[0]["blocks_0"]["mlp"]["fc1"]["kernel"]
    overrides: dict[str, Any] = {
        "swin.embed_dim": embed_dim, "swin.depths": depths, "swin.num_heads": heads, "swin.patch_size": patch,
        "swin.mlp_ratio": mlp.shape[1] / mlp.shape[0], "swin.qkv_bias": "bias" in first[0]["qkv"]}
    if "decode_head" in params:
        head = params["decode_head"]["conv_seg"]["kernel"]
        n_psp = len([k for k in params["decode_head"] if k.startswith("psp_modules_")])
        scales = tuple(hf_config.get("pool_scales", (1, 2, 3, 6)))
        if len(scales) != n_psp:
            raise ValueError(f"{source}: {n_psp} PPM branches but pool scales {scales}; pass a config.json")
        overrides.update({"decoder.channels": head.shape[2], "decoder.pool_scales": scales})
        num_classes = num_classes or head.shape[3]
    if "auxiliary_head" in params:
        overrides.update(aux_head_overrides(params["auxiliary_head"], embed_dim))
    return make_model_config(size_name(embed_dim, depths, heads), window_size=window,
                             num_classes=num_classes or 124, **overrides)


def _resize_tables(backbone: dict, window: int, report: ConversionReport) -> None:
    for stage_name, stage in sorted(backbone.items()):
        for block_name, block in sorted(stage.items()) if stage_name.startswith("layers_") else []:
            if block_name.startswith("blocks_"):
                attn = block["attn"]
                attn["relative_position_bias_table"] = resize_relative_position_table(
                    attn["relative_position_bias_table"], window)
                report.interpolated.append(f"backbone/{stage_name}/{block_name}/attn/relative_position_bias_table")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _complete(out: dict, cfg, source: str, report: ConversionReport, full: bool | None = None) -> dict:
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
        expected = _flat(abstract[collection])
        got = _flat(out[collection])
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
                fresh = _fresh_init(model, cfg, [p for _, p, _ in missing])
            value, how = np.asarray(_flat(fresh[collection])[path]), "random init, seed 0"
        _set(out[collection], path, value)
        report.missing.append(f"{collection}/{path} ({how})")
    if not full:
        out.pop("batch_stats")
        out["batch_stats"] = {}
    return out


def _fresh_init(model, cfg, paths: list[str]) -> dict:
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


def _load(path_or_state_dict):
    if isinstance(path_or_state_dict, (str, bytes)) or hasattr(path_or_state_dict, "__fspath__"):
        return load_state_dict(str(path_or_state_dict))
    return path_or_state_dict, {}


def _from(source: str, path_or_state_dict, window_size, num_classes, return_report):
    sd, hf_config = _load(path_or_state_dict)
    variables, cfg, report = convert_state_dict(sd, source, window_size=window_size, num_classes=num_classes,
                                                hf_config=hf_config)
    return (variables, cfg, report) if return_report else (variables, cfg)


def from_hf_upernet(path_or_state_dict, *, window_size=None, num_classes=None, return_report=False):
    """HF `UperNetForSemanticSegmentation` (Swin backbone): a `save_pretrained` folder, a weight file or a state
    dict -> (variables {"params", "batch_stats"}, model_config)."""
    return _from("hf-upernet", path_or_state_dict, window_size, num_classes, return_report)


def from_mmseg_upernet(path_or_state_dict, *, window_size=None, num_classes=None, return_report=False):
    """mmseg / Swin-Transformer-Semantic-Segmentation UperNet-Swin checkpoint (official backbone names)."""
    return _from("mmseg-upernet", path_or_state_dict, window_size, num_classes, return_report)


def from_hf_swin(path_or_state_dict, *, window_size=None, return_report=False):
    """HF `SwinModel` / `SwinForImageClassification` / `SwinBackbone` -> backbone-only variables, model_config."""
    return _from("hf-swin", path_or_state_dict, window_size, None, return_report)


def from_timm_swin(path_or_state_dict, *, window_size=None, return_report=False):
    """timm `swin_*` (downsample at stage end or, timm >= 0.9, at the next stage's start) -> backbone-only."""
    return _from("timm-swin", path_or_state_dict, window_size, None, return_report)


def from_swin_official(path_or_state_dict, *, window_size=None, return_report=False):
    """Official Swin release `.pth` (weights under its "model" key) -> backbone-only variables, model_config."""
    return _from("swin-official", path_or_state_dict, window_size, None, return_report)


from stcl_jax.convert.cnn import from_mmseg_resnet, from_mmseg_upernet_resnet, from_timm_resnet  # noqa: E402
from stcl_jax.convert.cswin import from_cswin_official  # noqa: E402

__all__ = ["SOURCES", "ConversionReport", "from_cswin_official", "from_timm_resnet", "from_mmseg_resnet",
           "from_mmseg_upernet_resnet", "convert_state_dict", "from_hf_upernet", "from_mmseg_upernet",
           "from_hf_swin", "from_timm_swin", "from_swin_official", "load_state_dict"]
