"""Model configuration: `model_config(size, **overrides)` -> locked `ml_collections.ConfigDict`.

Sizes follow the Swin paper / mmsegmentation `upernet_swin_*` configs; "micro" is a tiny variant that inits and
applies on one CPU in seconds (tests, `runlocal` configs). The sizes "resnet50" and "resnest101" select those CNN
encoders (mmseg's `ResNetV1c` and `ResNeSt`, stcl_jax.models.backbones); `model_config("micro",
backbone="resnet50")` is a tiny one. The sizes "cswin_t", "cswin_s", "cswin_b", "cswin_l" select the CSWin
Transformer (stcl_jax.models.backbones.cswin; `model_config("micro", backbone="cswin")` is a tiny one). Fields
(all documented in docs/design.md):

  backbone                                       "swin" | "cswin" | "resnet50" | "resnest101": the encoder
  swin.{embed_dim, depths, num_heads, window_size, patch_size, mlp_ratio, qkv_bias, drop_path_rate}
  cswin.{embed_dim, depths, num_heads, split_size, mlp_ratio, drop_path_rate}  CSWin encoder (stage i has
                                                 embed_dim * 2**i channels; split_size: stripe width per stage,
                                                 the last stage's unused: full attention); read only when
                                                 backbone is "cswin"; the shortcuts embed_dim, depths, num_heads,
                                                 drop_path_rate set these then
  cnn.{depths, stem_width, width, radix, avg_down}  CNN encoder: blocks per stage, deep-stem width (its last conv
                                                 has twice that), stage-1 bottleneck width (stage i: width * 2**i,
                                                 outputs 4x), split-attention radix (0 = plain ResNet bottleneck),
                                                 average-pool shortcuts; read only when backbone is a CNN
  decoder.{channels, pool_scales, dropout}      UperNet head (mmseg UPerHead)
  aux.{channels, in_index, num_convs, dropout}  FCN auxiliary head on a backbone stage
  projection.{dim, feature, stride}             STCL projection head (default: encoder stage 2, stride 8);
                                                `stride` is derived from `feature`
  num_classes, dtype ("float32" | "bfloat16"), remat (rematerialise each Swin block in the backward pass),
  remat_policy (with remat: "full" recomputes the whole block; "dots" keeps the outputs of its matmuls without
                batch dimensions, i.e. the Dense layers, and recomputes the rest: attention, norms, GELU),
  attention_impl ("xla": einsum window attention | "cudnn": the regular windows through cuDNN's fused attention,
                  GPU only and not yet measured | "pallas": every window through the fused Pallas kernels of
                  stcl_jax.kernels.window_attention, Triton / Mosaic / CPU interpret mode, not yet measured on a
                  GPU or TPU | "auto": "xla" for now, swin.resolve_attention_impl)
"""

from __future__ import annotations

from typing import Any

import ml_collections

# embed_dim, depths, num_heads. Window size is a separate argument (7 for the 224 ImageNet checkpoints, 12 for 384).
SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "micro": (16, (1, 1, 2, 1), (1, 2, 2, 4)),
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    "small": (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}
_ALIASES = {"t": "tiny", "s": "small", "b": "base", "l": "large"}

# CNN encoders (mmseg layouts): depths, stem width, stage-1 width, radix, avg_down.
CNN_BACKBONES: dict[str, dict[str, Any]] = {
    "resnet50": dict(depths=(3, 4, 6, 3), stem_width=32, width=64, radix=0, avg_down=False),
    "resnest101": dict(depths=(3, 4, 23, 3), stem_width=64, width=64, radix=2, avg_down=True),
}
CNN_MICRO = dict(depths=(1, 1, 1, 1), stem_width=8, width=8)

# CSWin Transformer (Dong et al. 2022, the official models/cswin.py): embed_dim, depths, num_heads. Split sizes
# (stripe widths) are the official segmentation configs' (1, 2, 7, 7); parameter shapes do not depend on them.
CSWIN_SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = {
    "cswin_t": (64, (1, 2, 21, 1), (2, 4, 8, 16)),
    "cswin_s": (64, (2, 4, 32, 2), (2, 4, 8, 16)),
    "cswin_b": (96, (2, 4, 32, 2), (4, 8, 16, 32)),
    "cswin_l": (144, (2, 4, 32, 2), (6, 12, 24, 24)),
}
CSWIN_MICRO = (16, (1, 1, 2, 1), (2, 2, 4, 4))
CSWIN_SPLIT_SIZE, CSWIN_MICRO_SPLIT_SIZE = (1, 2, 7, 7), (1, 2, 3, 3)
BACKBONES = ("swin", "cswin", *CNN_BACKBONES)

# Feature maps the projection head may read and their stride w.r.t. the input (patch size 4).
PROJECTION_FEATURES = ("fused", "stage1", "stage2", "stage3", "stage4")
# The paper's projection head reads the encoder's features (sec. 2.1, Fig. 2); stage 2 is the finest encoder stage
# at stride 8: 96x96 embeddings per 768 crop. docs/design.md ("Where STCL reads its features") gives the reasons and
# BENCHMARKS.md the measurement; "fused" (the decoder's stride-4 map, 16x the loss FLOPs) stays available.
DEFAULT_PROJECTION_FEATURE = "stage2"

# model.remat_policy values (the jax.checkpoint policy of each: stcl_jax.models.swin.remat_policy).
REMAT_POLICIES = ("full", "dots")
# model.attention_impl values: "xla" (einsums, bf16 probabilities saved) | "cudnn" (regular windows fused by cuDNN)
# | "pallas" (all windows through stcl_jax.kernels.window_attention) | "auto" (= "xla" until measured otherwise).
ATTENTION_IMPLS = ("xla", "cudnn", "pallas", "auto")

# Keyword shortcuts accepted by model_config for the most common overrides.
_SHORTCUTS = {
    "window_size": "swin.window_size",
    "drop_path_rate": "swin.drop_path_rate",
    "embed_dim": "swin.embed_dim",
    "depths": "swin.depths",
    "num_heads": "swin.num_heads",
    "decoder_channels": "decoder.channels",
    "aux_channels": "aux.channels",
    "projection_dim": "projection.dim",
    "projection_feature": "projection.feature",
}


def size_name(embed_dim: int, depths, num_heads) -> str:
    """The size whose Swin numbers these are, or "custom"."""
    for name, numbers in SIZES.items():
        if numbers == (embed_dim, tuple(depths), tuple(num_heads)):
            return name
    return "custom"


def cswin_size_name(embed_dim: int, depths) -> str:
    """The CSWin size with this width and these depths (they fix the heads, which no tensor shape shows), or
    "custom"."""
    for name, (dim, size_depths, _) in CSWIN_SIZES.items():
        if (dim, size_depths) == (embed_dim, tuple(depths)):
            return name
    return "custom"


def projection_stride(feature: str, patch_size: int = 4) -> int:
    """Stride (input pixels per embedding pixel) of the feature map named `feature`."""
    if feature == "fused":
        return patch_size
    if feature in PROJECTION_FEATURES:
        return patch_size * 2 ** (int(feature[-1]) - 1)
    raise ValueError(f"projection.feature={feature!r}: expected one of {PROJECTION_FEATURES}")


def stage_channels(cfg) -> tuple[int, ...]:
    """Channels of the four encoder stage outputs of a model config."""
    if cfg.backbone == "swin":
        return tuple(cfg.swin.embed_dim * 2 ** i for i in range(4))
    if cfg.backbone == "cswin":
        return tuple(cfg.cswin.embed_dim * 2 ** i for i in range(4))
    return tuple(4 * cfg.cnn.width * 2 ** i for i in range(4))


def encoder_patch_size(cfg) -> int:
    """Stride of the first encoder stage (Swin: its patch size; CSWin's conv embedding and the CNNs' stems: 4)."""
    return cfg.swin.patch_size if cfg.backbone == "swin" else 4


def model_config(size: str = "tiny", *, num_classes: int = 124, window_size: int = 7, backbone: str | None = None,
                 **overrides: Any):
    """Returns the locked model ConfigDict for Swin-{size} (or a CNN) + UperNet + aux FCN + STCL projection head.

    `size` is a Swin size, "micro", a CNN backbone name ("resnet50", "resnest101", which sets `backbone`) or a
    CSWin size ("cswin_t" ... "cswin_l", which sets backbone="cswin"); `backbone` picks the encoder ("micro" with
    a CNN or "cswin" backbone gives a tiny one).

    `overrides` take the shortcut names above (`drop_path_rate=0.2`, `projection_dim=256`), any top-level field
    (`dtype="bfloat16"`, `remat=True`) or a dotted path passed through a dict (`**{"decoder.channels": 256}`).
    An unknown name raises a ValueError naming it.
    """
    key = _ALIASES.get(size.lower(), size.lower())
    backbone = backbone or (key if key in CNN_BACKBONES else "cswin" if key in CSWIN_SIZES else "swin")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone={backbone!r} unknown: expected one of {BACKBONES}")
    if key in CNN_BACKBONES and key != backbone:
        raise ValueError(f"model size {size!r} is a CNN backbone but backbone={backbone!r}")
    if (key in CSWIN_SIZES) != (backbone == "cswin") and key not in ("micro", "custom"):
        raise ValueError(f"model size {size!r} with backbone={backbone!r}: the CSWin sizes are "
                         f"{sorted(CSWIN_SIZES)} (or 'micro' / 'custom' with backbone='cswin')")
    if key not in SIZES and key != "custom" and key not in CNN_BACKBONES and key not in CSWIN_SIZES:
        raise ValueError(f"model size {size!r} unknown: expected one of {sorted(SIZES)}, t/s/b/l, "
                         f"{sorted(CNN_BACKBONES)}, {sorted(CSWIN_SIZES)}, or 'custom' (tiny numbers, meant to be "
                         "overridden, e.g. by weight import)")
    embed_dim, depths, num_heads = SIZES.get(key, SIZES["tiny"])
    micro = key == "micro"
    cfg = ml_collections.ConfigDict()
    cfg.size = key
    cfg.backbone = backbone
    cfg.num_classes = num_classes
    cfg.dtype = "float32"
    cfg.remat = False
    cfg.remat_policy = "full"
    cfg.attention_impl = "xla"
    cfg.swin = ml_collections.ConfigDict(dict(
        embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size, patch_size=4,
        mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.1 if micro else 0.3))
    cnn = dict(CNN_BACKBONES.get(backbone, CNN_BACKBONES["resnet50"]))
    cfg.cnn = ml_collections.ConfigDict({**cnn, **(CNN_MICRO if micro else {})})
    cs_dim, cs_depths, cs_heads = CSWIN_MICRO if micro else CSWIN_SIZES.get(key, CSWIN_SIZES["cswin_t"])
    cfg.cswin = ml_collections.ConfigDict(dict(
        embed_dim=cs_dim, depths=cs_depths, num_heads=cs_heads,
        split_size=CSWIN_MICRO_SPLIT_SIZE if micro else CSWIN_SPLIT_SIZE, mlp_ratio=4.0,
        drop_path_rate=0.1 if micro else 0.3))
    cfg.decoder = ml_collections.ConfigDict(dict(
        channels=32 if micro else 512, pool_scales=(1, 2, 3, 6), dropout=0.1))
    cfg.aux = ml_collections.ConfigDict(dict(channels=16 if micro else 256, in_index=2, num_convs=1, dropout=0.1))
    cfg.projection = ml_collections.ConfigDict(dict(dim=16 if micro else 512, feature=DEFAULT_PROJECTION_FEATURE,
                                                     stride=projection_stride(DEFAULT_PROJECTION_FEATURE)))
    for name, value in overrides.items():
        path = _SHORTCUTS.get(name, name)
        if backbone == "cswin" and name in _SHORTCUTS and path.startswith("swin.") and path[5:] in cfg.cswin:
            path = "cswin." + path[5:]  # embed_dim, depths, num_heads, drop_path_rate of the encoder in use
        node, *rest = path.split(".")
        target = cfg
        for part in [node, *rest][:-1]:
            if part not in target or not isinstance(target[part], ml_collections.ConfigDict):
                raise ValueError(f"model_config: unknown override {name!r} (no config group {part!r})")
            target = target[part]
        leaf = path.split(".")[-1]
        if leaf not in target:
            raise ValueError(f"model_config: unknown override {name!r}; fields are {sorted(_flat_keys(cfg))}")
        target[leaf] = tuple(value) if isinstance(value, list) else value
    cfg.projection.stride = projection_stride(cfg.projection.feature, encoder_patch_size(cfg))
    validate(cfg)
    cfg.lock()
    return cfg


def config_from_dict(d: dict):
    """Rebuilds a locked model ConfigDict from `cfg.to_dict()` / its JSON (lists become tuples again)."""
    d = dict(d)
    size = d.pop("size", "tiny")
    backbone = d.pop("backbone", "swin")
    flat = {}
    for group, value in d.items():
        if isinstance(value, dict):
            flat.update({f"{group}.{k}": v for k, v in value.items()})
        else:
            flat[group] = value
    stride = flat.pop("projection.stride", None)
    cfg = model_config(size, backbone=backbone, **flat)
    if stride is not None and stride != cfg.projection.stride:
        raise ValueError(f"projection.stride={stride} does not match projection.feature="
                         f"{cfg.projection.feature!r} (stride {cfg.projection.stride})")
    return cfg


def _flat_keys(cfg, prefix=""):
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            yield from _flat_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def validate(cfg) -> None:
    """Checks the consistency of a model config; raises ValueError naming the offending field."""
    if cfg.backbone not in BACKBONES:
        raise ValueError(f"backbone={cfg.backbone!r} unknown: expected one of {BACKBONES}")
    if cfg.backbone in CNN_BACKBONES:
        _validate_cnn(cfg)
    if cfg.backbone == "cswin":
        _validate_cswin(cfg.cswin)
    s = cfg.swin
    if len(s.depths) != 4 or len(s.num_heads) != 4:
        raise ValueError(f"swin.depths={s.depths} / swin.num_heads={s.num_heads}: need 4 stages each")
    for i, h in enumerate(s.num_heads):
        if (s.embed_dim * 2**i) % h:
            raise ValueError(f"swin.num_heads[{i}]={h} does not divide the stage width {s.embed_dim * 2**i}")
    if s.window_size < 1 or s.patch_size < 1:
        raise ValueError(f"swin.window_size={s.window_size}, swin.patch_size={s.patch_size}: must be >= 1")
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={cfg.dtype!r}: expected 'float32' or 'bfloat16'")
    if cfg.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl={cfg.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
    if cfg.remat_policy not in REMAT_POLICIES:
        raise ValueError(f"remat_policy={cfg.remat_policy!r}: expected one of {REMAT_POLICIES}")
    if not 0 <= cfg.aux.in_index < 4:
        raise ValueError(f"aux.in_index={cfg.aux.in_index}: must be a stage index 0..3")
    expected = projection_stride(cfg.projection.feature, encoder_patch_size(cfg))
    if cfg.projection.stride != expected:
        raise ValueError(f"projection.stride={cfg.projection.stride} but projection.feature="
                         f"{cfg.projection.feature!r} has stride {expected}: set both together")
    if cfg.num_classes < 1:
        raise ValueError(f"num_classes={cfg.num_classes}: must be >= 1")


def _validate_cnn(cfg) -> None:
    c = cfg.cnn
    if len(c.depths) != 4 or min(c.depths) < 1:
        raise ValueError(f"cnn.depths={c.depths}: need 4 stages of >= 1 block")
    if c.stem_width < 1 or c.width < 1:
        raise ValueError(f"cnn.stem_width={c.stem_width}, cnn.width={c.width}: must be >= 1")
    if (cfg.backbone == "resnest101") != (c.radix >= 1):
        raise ValueError(f"cnn.radix={c.radix} with backbone={cfg.backbone!r}: resnest101 needs radix >= 1 "
                         "(split attention), resnet50 radix 0")


def _validate_cswin(c) -> None:
    if not len(c.depths) == len(c.num_heads) == len(c.split_size) == 4 or min(c.depths) < 1:
        raise ValueError(f"cswin.depths={c.depths} / cswin.num_heads={c.num_heads} / cswin.split_size="
                         f"{c.split_size}: need 4 stages each, >= 1 block per stage")
    for i, (h, split) in enumerate(zip(c.num_heads, c.split_size)):
        width = c.embed_dim * 2 ** i
        if h < 1 or width % h:
            raise ValueError(f"cswin.num_heads[{i}]={h} does not divide the stage width {width}")
        if i < 3 and h % 2:
            raise ValueError(f"cswin.num_heads[{i}]={h}: must be even (half the heads attend in vertical, half in "
                             "horizontal stripes; only the last stage uses full attention)")
        if split < 1:
            raise ValueError(f"cswin.split_size[{i}]={split}: must be >= 1")
    if c.mlp_ratio <= 0 or not 0 <= c.drop_path_rate < 1:
        raise ValueError(f"cswin.mlp_ratio={c.mlp_ratio}, cswin.drop_path_rate={c.drop_path_rate}: need a "
                         "positive ratio and a rate in [0, 1)")
