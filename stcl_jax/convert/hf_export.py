"""Export to PyTorch: our segmenter variables as a Hugging Face `UperNetForSemanticSegmentation` safetensors file.

The key names come from running the importer's own mapping (`stcl_jax.convert.mapping`, "hf-upernet") over the
key list of the HF model built for the config, so import and export cannot drift apart. Needs torch +
transformers + safetensors (`pip install -e .[torch]`); `python -m stcl_jax.export --safetensors` calls it.
"""

from __future__ import annotations

import os

import numpy as np

from stcl_jax.convert import mapping
from stcl_jax.convert.common import flatten, param_leaf

SAFETENSORS_MODULES = ("torch", "transformers", "safetensors")


def check_safetensors_dependencies() -> None:
    """ImportError (one line naming the extra) when --safetensors cannot run; called before any file is written."""
    import importlib.util

    missing = [m for m in SAFETENSORS_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"--safetensors needs torch, transformers and safetensors ({', '.join(missing)} not "
                          "installed): pip install -e .[torch]")


def hf_upernet_config(model_cfg):
    """The `transformers.UperNetConfig` (Swin backbone) with the architecture of `model_cfg`."""
    import transformers

    if model_cfg.backbone != "swin":
        raise ValueError(f"model backbone={model_cfg.backbone!r}: the HF UperNet export writes a Swin backbone only")
    if model_cfg.aux.in_index != 2:
        raise ValueError(f"model aux.in_index={model_cfg.aux.in_index}: HF UperNet's auxiliary head reads stage 3 "
                         "(index 2) only, so this model has no HF equivalent")
    s = model_cfg.swin
    swin = transformers.SwinConfig(embed_dim=s.embed_dim, depths=list(s.depths), num_heads=list(s.num_heads),
                                   window_size=s.window_size, patch_size=s.patch_size, mlp_ratio=s.mlp_ratio,
                                   qkv_bias=s.qkv_bias, drop_path_rate=s.drop_path_rate,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    return transformers.UperNetConfig(backbone_config=swin, hidden_size=model_cfg.decoder.channels,
                                      pool_scales=list(model_cfg.decoder.pool_scales),
                                      auxiliary_channels=model_cfg.aux.channels,
                                      auxiliary_num_convs=model_cfg.aux.num_convs, num_labels=model_cfg.num_classes)


def _to_torch_layout(value: np.ndarray, leaf: str, part: str) -> np.ndarray:
    """Inverse of the importer's layouts: Flax conv (kh, kw, in, out) / Dense (in, out) kernels -> PyTorch;
    `part` k of our fused qkv -> HF's separate q/k/v. Other leaves keep their layout."""
    if leaf == "kernel" and value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and value.ndim == 2:
        value = value.T
    if part:
        value = np.split(value, 3, axis=0)[int(part)]
    return np.ascontiguousarray(value)


def to_hf_state_dict(variables: dict, model_cfg) -> tuple[dict, dict]:
    """(HF UperNet state dict of NumPy arrays, {"left_out": our leaves not exported, "filled": HF keys set to init}).

    Every key of the HF model is mapped to our leaf with `stcl_jax.convert.mapping.rename("hf-upernet", ...)`."""
    import torch
    import transformers

    with torch.device("meta"):  # key names and shapes only, no memory
        hf = transformers.UperNetForSemanticSegmentation(hf_upernet_config(model_cfg))
    ours = {k: np.asarray(v) for k, v in flatten(variables).items()}
    used, filled, out = set(), [], {}
    for key, tensor in hf.state_dict().items():
        shape = tuple(tensor.shape)
        if key.endswith("relative_position_bias_table"):
            module, kind = key.rsplit(".", 1)
            target = mapping.rename("hf-upernet", key)
            target = target and target.rsplit("/", 1)[0]
        else:
            module, _, kind = key.rpartition(".")
            target = mapping.rename("hf-upernet", module)
        if target is None or kind == "num_batches_tracked":
            if kind not in ("weight", "bias", "num_batches_tracked"):
                raise ValueError(f"HF key {key} has no stcl_jax counterpart and no known init value")
            init = {"weight": np.ones, "bias": np.zeros}.get(kind, lambda s: np.zeros(s, np.int64))
            out[key] = init(shape).astype(np.int64 if kind == "num_batches_tracked" else np.float32)
            filled.append(key)
            continue
        target, _, part = target.partition("#")
        collection, leaf = param_leaf(target, kind, np.empty(shape))
        name = f"{collection}/{target}/{leaf}"
        if name not in ours:
            raise KeyError(f"HF key {key} maps to {name}, which the variables lack (were they made for another "
                           "model config?)")
        value = _to_torch_layout(ours[name], leaf, part)
        if value.shape != shape:
            raise ValueError(f"{name} -> {key}: shape {value.shape}, HF expects {shape}")
        out[key] = value
        used.add(name)
    return out, {"left_out": sorted(set(ours) - used), "filled": filled}


def write_safetensors(variables: dict, model_cfg, directory: str) -> dict:
    """`directory/model.safetensors` + `directory/config.json` (HF `from_pretrained` layout); returns the report."""
    import torch
    from safetensors.torch import save_file

    state, report = to_hf_state_dict(variables, model_cfg)
    os.makedirs(directory, exist_ok=True)
    tensors = {}
    for k, v in state.items():  # torch cannot take a NumPy bfloat16 array: cast through float32
        if str(v.dtype) == "bfloat16":
            tensors[k] = torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
        else:
            tensors[k] = torch.from_numpy(np.array(v, order="C"))  # (ascontiguousarray would make 0-d 1-d)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    hf_cfg = hf_upernet_config(model_cfg)
    hf_cfg.architectures = ["UperNetForSemanticSegmentation"]
    hf_cfg.save_pretrained(directory)
    return report
