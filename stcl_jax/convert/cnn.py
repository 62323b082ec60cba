"""Import ResNet-50 (V1c) / ResNeSt-101 weights from timm or mmsegmentation state dicts, offline.

    variables, model_config = stcl_jax.convert.cnn.from_timm_resnet(timm.create_model("resnest101e").state_dict())

Sources (`SOURCES`):
  timm-resnet      timm `resnet50c` / `resnest101e` (any depths / widths of those layouts): ImageNet-1K weights
  mmseg-resnet     mmseg `ResNetV1c` / `ResNeSt` backbone keys (`stem.*`, `layer*`), as in its ImageNet
                   `open-mmlab://resnet50_v1c` / `resnest101` pre-training files, optionally under "backbone."
  mmseg-upernet-resnet  a whole mmseg UperNet-R50 / UperNet-S101 segmentation checkpoint (backbone + heads)

The model config is read off the tensors (depths, stem width, stage width, split attention, avg-down).
Backbone-only sources give `{"params": {"backbone"}, "batch_stats": {"backbone"}}` (CNN checkpoints carry their
BatchNorm running statistics, which training's `init_from` loads as well); the full UperNet source also gives
the heads, with the projection head (no public checkpoint has one) freshly initialised and reported missing.
Classifier (`fc.*`) keys are reported unused; `num_batches_tracked` is ignored.
"""

from __future__ import annotations

import re

import numpy as np

# The package defines these before it imports this module (at its end), so the import is not circular.
from stcl_jax.convert.common import ConversionReport, aux_head_overrides, complete, load_source, set_path
from stcl_jax.convert.mapping import _DECODER, _apply
from stcl_jax.convert.tensors import conv_kernel, to_numpy_state_dict

# Stem: timm keeps the first two BNs in `conv1` and the third as `bn1`; mmseg has all three in `stem`.
_TIMM_STEM = {"conv1.0": "conv_0", "conv1.1": "bn_0", "conv1.3": "conv_1", "conv1.4": "bn_1", "conv1.6": "conv_2",
              "bn1": "bn_2"}
_MMSEG_STEM = {"stem.0": "conv_0", "stem.1": "bn_0", "stem.3": "conv_1", "stem.4": "bn_1", "stem.6": "conv_2",
               "stem.7": "bn_2"}
_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(conv1|bn1|conv2|bn2|conv3|bn3|conv2\.(?:conv|bn0|fc1|bn1|fc2)"
                    r"|downsample\.\d)$")

# source -> (stem names, key prefixes stripped, has decoder)
SOURCES = {
    "timm-resnet": (_TIMM_STEM, ("backbone.",), False),
    "mmseg-resnet": (_MMSEG_STEM, ("backbone.",), False),
    "mmseg-upernet-resnet": (_MMSEG_STEM, ("backbone.",), True),
}


def _backbone_path(module: str, kind: str, value: np.ndarray, stem: dict) -> str | None:
    """Our backbone module path for a PyTorch module path, or None."""
    if module in stem:
        return f"stem/{stem[module]}"
    m = _BLOCK.match(module)
    if m is None:
        return None
    stage, block, part = int(m.group(1)) - 1, m.group(2), m.group(3)
    if part.startswith("downsample."):  # timm / mmseg number it 0/1 (conv, BN) or, after an avg pool, 1/2
        part = "downsample_conv" if kind == "weight" and value.ndim == 4 else "downsample_bn"
    return f"layers_{stage}/blocks_{block}/{part.replace('.', '/')}"


def _leaf(kind: str, value: np.ndarray) -> tuple[str, str] | None:
    return {"running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var"),
            "bias": ("params", "bias"),
            "weight": ("params", "kernel" if value.ndim > 1 else "scale")}.get(kind)


def convert_state_dict(state_dict, source: str, *, num_classes: int | None = None):
    """(variables, model_config, ConversionReport) from a timm / mmseg ResNet or ResNeSt state dict."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r} unknown: expected one of {sorted(SOURCES)}")
    stem, prefixes, has_decoder = SOURCES[source]
    sd = to_numpy_state_dict(state_dict)
    report = ConversionReport(source)
    out: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            report.ignored.append(key)
            continue
        module, _, kind = key.rpartition(".")
        target = _apply(_DECODER, module) if has_decoder else None
        target = target.replace("/batch_norm", "/bn") if target else None
        if target is None:
            for prefix in prefixes:
                module = module[len(prefix):] if module.startswith(prefix) else module
            target = _backbone_path(module, kind, value, stem)
            target = target and f"backbone/{target}"
        leaf = _leaf(kind, value)
        if target is None or leaf is None:
            report.unused.append(key)
            continue
        collection, name = leaf
        set_path(out[collection], f"{target}/{name}", conv_kernel(value) if value.ndim == 4 else value)
        report.loaded.append(key)
    if "backbone" not in out["params"]:
        raise ValueError(f"no ResNet / ResNeSt tensors recognised as {source!r} (first keys: {list(sd)[:5]}); "
                         f"is --from right? sources: {sorted(SOURCES)}")
    cfg = infer_config(out["params"], num_classes)
    backbone_stats = out["batch_stats"]["backbone"]
    variables = complete(out, cfg, source, report, full=has_decoder)
    if not has_decoder:
        variables["batch_stats"] = {"backbone": backbone_stats}
    return variables, cfg, report


def infer_config(params: dict, num_classes: int | None):
    """The model config whose CNN backbone has the converted tensors' shapes (and heads, when present)."""
    from stcl_jax.models.config import model_config

    bb = params["backbone"]
    depths = tuple(len(bb.get(f"layers_{i}", {})) for i in range(4))
    if 0 in depths:
        raise ValueError(f"checkpoint has stage depths {depths}: a ResNet backbone needs 4 stages (layer1..layer4)")
    first = bb["layers_0"]["blocks_0"]
    split = isinstance(first["conv2"], dict) and "conv" in first["conv2"]
    radix = first["conv2"]["conv"]["kernel"].shape[-1] // first["conv1"]["kernel"].shape[-1] if split else 0
    # avg-down: stage 2's projection is a 1x1 conv that no longer strides; only the tensor layout can't tell, so
    # ResNeSt (split attention) checkpoints are avg-down, as every published one is (timm "e"/"d", mmseg).
    overrides = {"cnn.depths": depths, "cnn.stem_width": bb["stem"]["conv_0"]["kernel"].shape[-1],
                 "cnn.width": first["conv1"]["kernel"].shape[-1], "cnn.radix": radix, "cnn.avg_down": split}
    if "decode_head" in params:
        head = params["decode_head"]["conv_seg"]["kernel"]
        overrides["decoder.channels"] = head.shape[2]
        num_classes = num_classes or head.shape[3]
    if "auxiliary_head" in params:
        overrides.update(aux_head_overrides(params["auxiliary_head"], 4 * overrides["cnn.width"]))
    backbone = "resnest101" if split else "resnet50"
    return model_config(backbone, num_classes=num_classes or 124, **overrides)


def _from(source, path_or_state_dict, num_classes, return_report):
    sd, _ = load_source(path_or_state_dict)
    variables, cfg, report = convert_state_dict(sd, source, num_classes=num_classes)
    return (variables, cfg, report) if return_report else (variables, cfg)


def from_timm_resnet(path_or_state_dict, *, return_report=False):
    """timm `resnet50c` / `resnest101e` (file or state dict) -> backbone-only variables, model_config."""
    return _from("timm-resnet", path_or_state_dict, None, return_report)


def from_mmseg_resnet(path_or_state_dict, *, return_report=False):
    """mmseg `ResNetV1c` / `ResNeSt` backbone weights -> backbone-only variables, model_config."""
    return _from("mmseg-resnet", path_or_state_dict, None, return_report)


def from_mmseg_upernet_resnet(path_or_state_dict, *, num_classes=None, return_report=False):
    """A whole mmseg UperNet-R50 / UperNet-S101 checkpoint -> full segmenter variables, model_config."""
    return _from("mmseg-upernet-resnet", path_or_state_dict, num_classes, return_report)
