"""Import official CSWin Transformer weights (microsoft/CSWin-Transformer) into the CSWin encoder, offline.

    variables, model_config = stcl_jax.convert.cswin.from_cswin_official("cswin_large_384.pth")
    python -m stcl_jax.convert --from cswin-official --input cswin_large_384.pth --output ckpt/cswin_l_22k_384

Reads the classification checkpoints (`models/cswin.py`; the classifier's final `norm.*` and `head.*` are dropped
and reported unused) and the segmentation backbone (`segmentation/backbone/cswin_transformer.py`, with the
output norms `norm1..norm4`), also under a "backbone." prefix; a checkpoint's {"state_dict": ...} wrapper and
"module." prefixes are removed. The result is backbone-only, `{"params": {"backbone": ...}, "batch_stats": {}}`.

Official key -> our parameter (weight -> kernel, or scale for a LayerNorm):
  stage1_conv_embed.0 / .2                  stage1_conv_embed/conv / ln
  stage{i}.{j}.{norm1,qkv,proj,norm2}       stage{i}/blocks_{j}/...
  stage{i}.{j}.attns.{k}.get_v              stage{i}/blocks_{j}/attns_{k}/get_v
  stage{i}.{j}.mlp.{fc1,fc2}                stage{i}/blocks_{j}/mlp/...
  merge{i}.{conv,norm}, norm{i}             merge{i}/..., norm{i}
Layouts: Linear (out, in) -> Dense (in, out); Conv2d (out, in / groups, kh, kw) -> (kh, kw, in / groups, out)
(the depth-wise `get_v` (C, 1, 3, 3) -> (3, 3, 1, C)); vectors as they are.

The mapping is 1:1: a key with no place in the encoder, a parameter no key fills, two keys for one parameter or
a shape mismatch stop the import with an error naming the key. The one exception: classification checkpoints have
no `norm1..norm4`; those are then set to the LayerNorm init (ones, zeros) and reported missing.

No tensor shape shows the heads: they come from the size (T/S/B/L, recognised by width and depths) or
`num_heads=`; nor the stripe widths: `split_size=` (default the segmentation configs' (1, 2, 7, 7)).
"""

from __future__ import annotations

import logging
import re

import numpy as np

# The package defines these before it imports this module (at its end), so the import is not circular.
from stcl_jax.convert.common import ConversionReport, flatten, load_source, set_path
from stcl_jax.convert.mapping import _apply
from stcl_jax.convert.tensors import conv_kernel, linear_kernel, to_numpy_state_dict

log = logging.getLogger(__name__)
SOURCES = {"cswin-official": ("backbone.",)}
_RULES = [
    (r"stage1_conv_embed\.0", "stage1_conv_embed/conv"),
    (r"stage1_conv_embed\.2", "stage1_conv_embed/ln"),
    (r"stage([1-4])\.(\d+)\.(norm1|qkv|proj|norm2)", r"stage\1/blocks_\2/\3"),
    (r"stage([1-4])\.(\d+)\.attns\.(\d+)\.get_v", r"stage\1/blocks_\2/attns_\3/get_v"),
    (r"stage([1-4])\.(\d+)\.mlp\.(fc1|fc2)", r"stage\1/blocks_\2/mlp/\3"),
    (r"merge([1-3])\.(conv|norm)", r"merge\1/\2"),
    (r"norm([1-4])", r"norm\1"),
]
_CLASSIFIER = re.compile(r"(norm|head)\.(weight|bias)")  # the classification model's final norm and classifier
_OUTPUT_NORMS = {f"norm{i}/{leaf}" for i in range(1, 5) for leaf in ("scale", "bias")}


def official_key(path: str) -> str:
    """The official state-dict key of our parameter path (for error messages)."""
    module, leaf = path.rsplit("/", 1)
    module = module.replace("stage1_conv_embed/conv", "stage1_conv_embed.0").replace("stage1_conv_embed/ln",
                                                                                      "stage1_conv_embed.2")
    module = re.sub(r"(blocks|attns)_(\d+)", lambda m: ("attns." if m.group(1) == "attns" else "") + m.group(2),
                    module)
    return f"{module.replace('/', '.')}.{'bias' if leaf == 'bias' else 'weight'}"


def _torch_to_flax(key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    kind = key.rsplit(".", 1)[1]
    if kind == "bias":
        return "bias", value
    layouts = {4: ("kernel", conv_kernel), 2: ("kernel", linear_kernel), 1: ("scale", lambda v: v)}
    if value.ndim not in layouts:
        raise ValueError(f"cswin-official: {key} has shape {value.shape}: expected a conv, linear or norm weight")
    leaf, layout = layouts[value.ndim]
    return leaf, layout(value)


def convert_state_dict(state_dict, source: str = "cswin-official", *, num_heads=None, split_size=None,
                       num_classes: int | None = None):
    """(backbone-only variables, model_config, ConversionReport) from an official CSWin state dict."""
    if source not in SOURCES:
        raise ValueError(f"source {source!r} unknown: expected one of {sorted(SOURCES)}")
    sd = to_numpy_state_dict(state_dict)
    report = ConversionReport(source)
    params: dict = {}
    keys: dict[str, str] = {}  # our path -> checkpoint key
    for key, value in sd.items():
        name = next((key[len(p):] for p in SOURCES[source] if key.startswith(p)), key)
        if _CLASSIFIER.fullmatch(name):
            report.unused.append(key)
            continue
        module, _, kind = name.rpartition(".")
        target = _apply(_RULES, module)
        if target is None or kind not in ("weight", "bias"):
            raise ValueError(f"{source}: checkpoint key {key!r} has no place in the CSWin encoder (first keys: "
                             f"{list(sd)[:3]}); is --from right?")
        leaf, value = _torch_to_flax(key, value)
        path = f"{target}/{leaf}"
        if path in keys:
            raise ValueError(f"{source}: checkpoint keys {keys[path]!r} and {key!r} both map to {path}")
        set_path(params, path, value)
        keys[path] = key
        report.loaded.append(key)
    cfg = infer_config(params, num_heads, split_size, num_classes)
    _check_and_complete(params, keys, cfg, source, report)
    log.info("%s", report)
    return {"params": {"backbone": params}, "batch_stats": {}}, cfg, report


def infer_config(params: dict, num_heads=None, split_size=None, num_classes: int | None = None):
    """The model config (backbone "cswin") with the converted tensors' widths and depths."""
    from stcl_jax.models.config import CSWIN_SIZES, cswin_size_name, model_config

    if "stage1_conv_embed" not in params:
        raise ValueError("cswin-official: no stage1_conv_embed.0.weight in the checkpoint: not a CSWin state dict")
    depths = tuple(len([k for k in params.get(f"stage{i}", {}) if k.startswith("blocks_")]) for i in range(1, 5))
    if 0 in depths:
        raise ValueError(f"cswin-official: checkpoint has stage depths {depths}: a CSWin encoder needs stage1..stage4")
    embed_dim = params["stage1_conv_embed"]["conv"]["kernel"].shape[-1]
    fc1 = params["stage1"]["blocks_0"]["mlp"]["fc1"]["kernel"]
    size = cswin_size_name(embed_dim, depths)
    if num_heads is None and size == "custom":
        raise ValueError(f"cswin-official: width {embed_dim} and depths {depths} are no CSWin size "
                         f"({sorted(CSWIN_SIZES)}); pass num_heads= (stcl_jax.convert.cswin.from_cswin_official)")
    overrides = {"cswin.embed_dim": embed_dim, "cswin.depths": depths, "cswin.mlp_ratio": fc1.shape[1] / fc1.shape[0],
                 "cswin.num_heads": tuple(num_heads or CSWIN_SIZES[size][2])}
    if split_size is not None:
        overrides["cswin.split_size"] = tuple(split_size)
    return model_config(size, backbone="cswin", num_classes=num_classes or 124, **overrides)


def _check_and_complete(params: dict, keys: dict, cfg, source: str, report: ConversionReport) -> None:
    """Every converted tensor has a parameter of its shape and every parameter a tensor (the output norms aside)."""
    import jax
    import jax.numpy as jnp

    from stcl_jax.models.backbones import CSWinConfig, CSWinTransformer

    encoder = CSWinTransformer(CSWinConfig.of(cfg.cswin))
    expected = flatten(jax.eval_shape(encoder.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"])
    got = flatten(params)
    for path, value in got.items():
        if path not in expected:
            raise ValueError(f"{source}: checkpoint key {keys[path]!r} has no place in the CSWin encoder of depths "
                             f"{tuple(cfg.cswin.depths)} (its last stage has one full-attention branch, attns.0)")
        if tuple(value.shape) != tuple(expected[path].shape):
            raise ValueError(f"{source}: {keys[path]} gives {path} the shape {value.shape}, the encoder expects "
                             f"{expected[path].shape} (cswin.num_heads={tuple(cfg.cswin.num_heads)})")
    missing = sorted(set(expected) - set(got))
    if missing and set(missing) != _OUTPUT_NORMS:
        raise ValueError(f"{source}: the checkpoint has no {official_key(missing[0])} (for {missing[0]}) and "
                         f"{len(missing) - 1} other encoder tensors missing")
    for path in missing:  # a classification checkpoint: no per-stage output norms
        set_path(params, path, (np.ones if path.endswith("scale") else np.zeros)(expected[path].shape, np.float32))
        report.missing.append(f"params/backbone/{path} (LayerNorm init)")


def from_cswin_official(path_or_state_dict, *, num_heads=None, split_size=None, return_report=False):
    """An official CSWin classification checkpoint or segmentation backbone (file or state dict) -> backbone-only
    variables, model_config (backbone "cswin")."""
    sd, _ = load_source(path_or_state_dict)
    variables, cfg, report = convert_state_dict(sd, "cswin-official", num_heads=num_heads, split_size=split_size)
    return (variables, cfg, report) if return_report else (variables, cfg)
