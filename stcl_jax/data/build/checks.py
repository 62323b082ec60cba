"""Checks of one frame's files (JPEG, mask PNG), shared by the per-video and per-image work units of the build
(`vspw_scan`, `image_scan`), which run in the `--workers` processes; no tensorflow-datasets code here.

A check raises ValueError with the reason; the work units turn it into a `Bad(path, reason)`, and the builder
decides whether it stops the build or goes into the report.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from stcl_jax.data.datasets import ade20k, vspw


@dataclasses.dataclass(frozen=True)
class Bad:
    path: str
    reason: str

    def __str__(self):
        return f"{self.path}: {self.reason}"


@dataclasses.dataclass
class Frame:
    name: str           # 8-digit frame name, no extension
    jpeg: bytes         # the file's bytes, unchanged
    png: bytes | None   # the mask file's bytes, unchanged; None = no label
    height: int
    width: int
    pixels: np.ndarray | None = None   # pixels per raw mask value (int64 (256,)), None = no label


def open_checked(data: bytes, fmt: str) -> Image.Image:
    """Fully decodes `data` (truncated files raise), checking the container format."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on corrupt files
        raise ValueError(f"corrupt or unreadable {fmt} ({type(e).__name__}: {e})") from None
    if img.format != fmt:
        raise ValueError(f"is a {img.format} file, expected {fmt}")
    return img


def check_frame(jpeg: bytes) -> tuple[int, int]:
    """Returns (h, w) of a valid 3-channel JPEG, else raises ValueError."""
    img = open_checked(jpeg, "JPEG")
    if img.mode not in ("RGB", "L", "CMYK", "YCbCr"):
        raise ValueError(f"JPEG mode {img.mode} is not an image the pipeline can read as RGB")
    return img.height, img.width


def label_histogram(png: bytes, size: tuple[int, int], what: str = "raw VSPW labels") -> np.ndarray:
    """Pixels per value (int64 (256,)) of a single-channel (L or P) PNG of `size` = (h, w); else ValueError."""
    img = open_checked(png, "PNG")
    if img.mode not in ("L", "P"):
        raise ValueError(f"mask mode {img.mode}: expected a single-channel (L or P) PNG of {what}")
    if (img.height, img.width) != size:
        raise ValueError(f"mask size {img.height}x{img.width} differs from its frame's {size[0]}x{size[1]}")
    return np.bincount(np.asarray(img, np.uint8).ravel(), minlength=256)


def check_vspw_mask(png: bytes, size: tuple[int, int]) -> np.ndarray:
    """Raises ValueError unless `png` is a single-channel PNG of `size` = (h, w) holding only VSPW raw labels.
    Returns its histogram (pixels per raw value, int64 (256,))."""
    counts = label_histogram(png, size)
    bad = vspw.invalid_raw_values(np.flatnonzero(counts))
    if bad:
        raise ValueError(f"label values {bad[:10]} are neither a VSPW class (0..{vspw.NUM_CLASSES}) nor void (255)")
    return counts


def check_ade20k_mask(png: bytes, size: tuple[int, int]) -> np.ndarray:
    """Checks an annotation PNG (single-channel L or P, size (h, w), values 0..150); raises ValueError with the
    reason. Returns the 256-bin histogram of its values (pixels per raw value)."""
    counts = label_histogram(png, size, "raw ADE20K labels")
    bad = ade20k.invalid_raw_values(np.flatnonzero(counts))
    if bad:
        raise ValueError(f"label values {bad[:10]} are not ADE20K labels (0 = other, 1..{ade20k.NUM_CLASSES})")
    return counts
