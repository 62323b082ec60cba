"""Reading PyTorch checkpoints without a model, PyTorch -> Flax layouts, and relative-position table resizing."""

from __future__ import annotations

import json
import logging
import os

import numpy as np

log = logging.getLogger(__name__)

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")


def to_numpy_state_dict(state_dict) -> dict[str, np.ndarray]:
    """Torch tensors / arrays -> float32 (or integer) NumPy arrays; unwraps {"model": ...} / {"state_dict": ...}."""
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # torch.Tensor
            value = value.detach().cpu()
            value = value.float().numpy() if value.is_floating_point() else value.numpy()
        elif not isinstance(value, np.ndarray):
            continue  # e.g. an epoch counter next to the weights
        out[key[7:] if key.startswith("module.") else key] = value
    return out


def load_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Reads a checkpoint file or a `save_pretrained` folder -> (NumPy state dict, config.json dict or {})."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    config = {}
    if os.path.isdir(path):
        cfg_path = os.path.join(path, "config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                config = json.load(f)
        files = [os.path.join(path, n) for n in _WEIGHT_FILES if os.path.exists(os.path.join(path, n))]
        if not files:
            raise FileNotFoundError(f"{path}: no weight file found (looked for {', '.join(_WEIGHT_FILES)}); "
                                    "sharded checkpoints: pass a single merged file")
        path = files[0]
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return to_numpy_state_dict(load_file(path)), config
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs PyTorch (pip install torch==2.13.0) or a .safetensors file") from e
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickles with non-tensor objects
        raise ValueError(f"{path}: not a readable PyTorch state dict ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(raw).__name__}")
    return to_numpy_state_dict(raw), config


def linear_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Linear (out, in) -> Flax Dense kernel (in, out)."""
    return np.ascontiguousarray(w.T)


def conv_kernel(w: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d (out, in, kh, kw) -> Flax Conv kernel (kh, kw, in, out)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution kernel with PyTorch's a = -0.75."""
    t = np.abs(t)
    return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of PyTorch `interpolate(mode="bicubic", align_corners=False)` (edge-clamped taps)."""
    m = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = int(np.floor(src))
        t = src - base
        for k, w in zip(range(-1, 3), _cubic(np.array([t + 1, t, 1 - t, 2 - t]))):
            m[i, min(max(base + k, 0), n_in - 1)] += w
    return m


def resize_relative_position_table(table: np.ndarray, window: int) -> np.ndarray:
    """Bicubically resizes a ((2w-1)**2, heads) bias table to window `window` (as mmseg / timm's simple resize)."""
    src = int(round(np.sqrt(table.shape[0])))
    if src * src != table.shape[0]:
        raise ValueError(f"relative_position_bias_table of shape {table.shape} is not square")
    dst = 2 * window - 1
    if src == dst:
        return table
    grid = table.reshape(src, src, -1).astype(np.float64)
    m = bicubic_matrix(src, dst)
    out = np.einsum("ih,hwc,jw->ijc", m, grid, m)
    return out.reshape(dst * dst, -1).astype(table.dtype)
