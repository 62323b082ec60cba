"""The Swin / UperNet-Swin importers (HF, mmseg, timm, the official release): key mapping, config inference,
relative-position-table interpolation; `stcl_jax.convert` exports their `from_*` functions."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from stcl_jax.convert import mapping
from stcl_jax.convert.common import ConversionReport, aux_head_overrides, complete, load_source, param_leaf, set_path
from stcl_jax.convert.tensors import (conv_kernel, linear_kernel, resize_relative_position_table,
                                      to_numpy_state_dict)
from stcl_jax.models.config import model_config as make_model_config
from stcl_jax.models.config import size_name

log = logging.getLogger(__name__)
SOURCES = tuple(mapping.SOURCES)


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
        collection, leaf = param_leaf(target, kind, value)
        if value.ndim == 4:
            value = conv_kernel(value)
        elif value.ndim == 2 and leaf == "kernel" and not part:
            value = linear_kernel(value)
        if part:  # one of q/k/v: fused below
            parts.setdefault(f"{target}/{leaf}", {})[int(part)] = value
        else:
            set_path(out[collection], f"{target}/{leaf}", value)
        report.loaded.append(key)
    for path, pieces in parts.items():
        if sorted(pieces) != [0, 1, 2]:
            raise ValueError(f"{source}: {path} needs query, key and value tensors; got parts {sorted(pieces)}")
        fused = np.concatenate([pieces[i] for i in range(3)], axis=0)
        set_path(out["params"], path, linear_kernel(fused) if fused.ndim == 2 else fused)
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
    variables = complete(out, cfg, source, report)
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


def _from(source: str, path_or_state_dict, window_size, num_classes, return_report):
    sd, hf_config = load_source(path_or_state_dict)
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
