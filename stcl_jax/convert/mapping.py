"""Key renaming: PyTorch checkpoint names -> our Flax module paths, per source format.

A rule maps a PyTorch module path (the key without its last `.weight`/`.bias`/... part) to our module path;
`convert.py` then turns the leaf into kernel/scale/bias/mean/var with the right layout. Keys that are derived
buffers (relative_position_index, attn_mask, num_batches_tracked) are "ignored"; keys no rule takes are "unused".
"""

from __future__ import annotations

import re

IGNORED = re.compile(r"(relative_position_index|attn_mask|num_batches_tracked)$")

# Hugging Face SwinModel / SwinBackbone (transformers 5 names, and the 4.x names hub checkpoints may carry).
_HF_SWIN = [
    (r"embeddings\.patch_embeddings\.projection", "patch_embed/proj"),
    (r"embeddings\.norm", "patch_embed/norm"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_before", r"layers_\1/blocks_\2/norm1"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.layernorm_after", r"layers_\1/blocks_\2/norm2"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self\.query|q_proj)", r"layers_\1/blocks_\2/attn/qkv#0"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self\.key|k_proj)", r"layers_\1/blocks_\2/attn/qkv#1"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self\.value|v_proj)", r"layers_\1/blocks_\2/attn/qkv#2"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:output\.dense|o_proj)", r"layers_\1/blocks_\2/attn/proj"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.attention\.(?:self|relative_position_bias)"
     r"\.relative_position_bias_table", r"layers_\1/blocks_\2/attn/relative_position_bias_table"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(?:intermediate\.dense|mlp\.fc1)", r"layers_\1/blocks_\2/mlp/fc1"),
    (r"encoder\.layers\.(\d+)\.blocks\.(\d+)\.(?:output\.dense|mlp\.fc2)", r"layers_\1/blocks_\2/mlp/fc2"),
    (r"encoder\.layers\.(\d+)\.downsample\.(reduction|norm)", r"layers_\1/downsample/\2"),
    (r"hidden_states_norms\.stage(\d)", lambda m: f"norm{int(m.group(1)) - 1}"),
]

# Official Swin release, timm (both downsample layouts), and the backbone of mmseg-era Swin segmentation
# checkpoints (`norm0..3` output norms).
_OFFICIAL_SWIN = [
    (r"patch_embed\.(proj|norm)", r"patch_embed/\1"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)", r"layers_\1/blocks_\2/\3"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.attn\.(qkv|proj)", r"layers_\1/blocks_\2/attn/\3"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
     r"layers_\1/blocks_\2/attn/relative_position_bias_table"),
    (r"layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)", r"layers_\1/blocks_\2/mlp/\3"),
    (r"layers\.(\d+)\.downsample\.(reduction|norm)", r"layers_\1/downsample/\2"),
    (r"norm([0-3])", r"norm\1"),
]

# UperNet decode head and FCN auxiliary head: Hugging Face names and mmseg names.
_DECODER = [
    (r"decode_head\.psp_modules\.(\d+)\.1\.(conv|batch_norm|bn)", r"decode_head/psp_modules_\1/\2"),
    (r"decode_head\.(bottleneck|fpn_bottleneck)\.(conv|batch_norm|bn)", r"decode_head/\1/\2"),
    (r"decode_head\.(lateral_convs|fpn_convs)\.(\d+)\.(conv|batch_norm|bn)", r"decode_head/\1_\2/\3"),
    (r"decode_head\.(?:classifier|conv_seg)", "decode_head/conv_seg"),
    (r"auxiliary_head\.convs\.(\d+)\.(conv|batch_norm|bn)", r"auxiliary_head/convs_\1/\2"),
    (r"auxiliary_head\.(?:classifier|conv_seg)", "auxiliary_head/conv_seg"),
]

# Source name -> (prefixes stripped from backbone keys, backbone rules, decoder present).
SOURCES = {
    "hf-upernet": (("backbone.swin.", "backbone."), _HF_SWIN, True),
    "hf-swin": (("swin.", "backbone.swin.", "backbone."), _HF_SWIN, False),
    "timm-swin": (("backbone.", "encoder."), _OFFICIAL_SWIN, False),
    "swin-official": (("backbone.",), _OFFICIAL_SWIN, False),
    "mmseg-upernet": (("backbone.",), _OFFICIAL_SWIN, True),
}

_COMPILED: dict[int, list] = {}


def _compile(rules):
    key = id(rules)
    if key not in _COMPILED:
        _COMPILED[key] = [(re.compile(p + r"$"), r) for p, r in rules]
    return _COMPILED[key]


def _apply(rules, module: str) -> str | None:
    for pattern, repl in _compile(rules):
        m = pattern.match(module)
        if m:
            return repl(m) if callable(repl) else m.expand(repl)
    return None


def timm_downsample_at_stage_start(keys) -> bool:
    """timm >= 0.9 keeps `downsample` at the start of the next stage (layers.1..3); the original at the end (0..2)."""
    keys = set(keys)
    return not any(k.startswith("layers.0.downsample.") for k in keys) and any(
        re.match(r"(?:backbone\.)?layers\.[1-3]\.downsample\.", k) for k in keys)


def rename(source: str, module: str, *, timm_layout: bool = False) -> str | None:
    """Our "/"-joined module path for PyTorch module path `module` of `source`, or None if we have no such module.

    A `#k` suffix marks part k of a fused tensor (HF's separate q/k/v projections -> our `qkv`).
    """
    prefixes, backbone_rules, has_decoder = SOURCES[source]
    if has_decoder:
        target = _apply(_DECODER, module)
        if target is not None:
            return target.replace("/batch_norm", "/bn")
    for prefix in prefixes:
        if module.startswith(prefix):
            module = module[len(prefix):]
            break
    target = _apply(backbone_rules, module)
    if target is None:
        return None
    if timm_layout and "/downsample/" in target:
        stage = int(target.split("/")[0].split("_")[1])
        target = f"layers_{stage - 1}/" + target.split("/", 1)[1]
    return "backbone/" + target
