"""Image normalisation, once for training (host or device) and inference: mmseg's `Normalize` in 0..255 units.

Every path computes `x * inv_std - shift` in float32 with `inv_std = 1/std` and `shift = mean/std` rounded from
float64 (`scale_and_shift`): the host pipeline, the train step's on-device normalisation and inference use one
formula (inside jit, XLA may fuse it into an FMA, which can differ from the host's result by an ulp).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def scale_and_shift(mean: Sequence[float], std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(inv_std, shift), float32 (3,) each: normalised = x * inv_std - shift."""
    inv_std = 1.0 / np.asarray(std, np.float64)
    return inv_std.astype(np.float32), (np.asarray(mean, np.float64) * inv_std).astype(np.float32)


def normalize(images: np.ndarray, mean: Sequence[float], std: Sequence[float], out: np.ndarray | None = None
              ) -> np.ndarray:
    """(x - mean) / std per RGB channel of a NumPy array, float32; written into `out` if given (saves a copy)."""
    inv_std, shift = scale_and_shift(mean, std)
    if out is None:
        out = np.empty(images.shape, np.float32)
    np.multiply(images, inv_std, out=out, dtype=np.float32)
    out -= shift
    return out
