"""Clip-consistent training augmentation, following mmseg 0.x's pipeline for Swin/UperNet on VSPW:

    Resize(img_scale=base_size, ratio_range) -> RandomCrop(crop_size, cat_max_ratio) -> RandomFlip ->
    PhotoMetricDistortion -> Normalize(mean, std, to_rgb) -> Pad(crop_size, pad_val=0, seg_pad_val=255)

Every random choice is drawn ONCE per clip and applied to all its frames, so the query and reference frames of a
clip stay aligned pixel for pixel. Images are RGB uint8 (T, H, W, 3) in, float32 out; labels are uint8 train ids
(T, H, W), resized with nearest neighbour, padded with the ignore index. The crop's `cat_max_ratio` rule looks at
the labels of all frames of the clip together.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import cv2
import numpy as np

from stcl_jax.data.normalize import normalize


def rescale_size(hw: tuple[int, int], scale_hw: tuple[float, float]) -> tuple[int, int]:
    """mmcv `rescale_size(keep_ratio)`: the largest size with the image's aspect ratio whose long edge fits
    max(scale) and short edge fits min(scale). Returns (new_h, new_w)."""
    h, w = hw
    factor = min(max(scale_hw) / max(h, w), min(scale_hw) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_clip(images: np.ndarray, labels: np.ndarray, size_hw: tuple[int, int]):
    """Bilinear for images, nearest for labels (cv2, as mmcv's imresize)."""
    h, w = size_hw
    if images.shape[1:3] == (h, w):
        return images, labels
    imgs = np.stack([cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR) for im in images])
    labs = np.stack([cv2.resize(lb, (w, h), interpolation=cv2.INTER_NEAREST) for lb in labels])
    return imgs, labs


def crop_box(rng: np.random.Generator, labels: np.ndarray, crop_hw: tuple[int, int], cat_max_ratio: float,
             ignore_index: int) -> tuple[int, int, int, int]:
    """mmseg RandomCrop: a random window (y0, y1, x0, x1); while one class covers >= cat_max_ratio of the valid
    pixels (or fewer than 2 classes are present), draw again, at most 10 more times; the last draw is kept."""
    h, w = labels.shape[1:3]
    ch, cw = crop_hw

    def draw():
        y0 = int(rng.integers(0, max(h - ch, 0) + 1))
        x0 = int(rng.integers(0, max(w - cw, 0) + 1))
        return y0, min(y0 + ch, h), x0, min(x0 + cw, w)

    box = draw()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y0, y1, x0, x1 = box
            counts = np.bincount(labels[:, y0:y1, x0:x1].ravel(), minlength=256)   # np.unique sorts: 20x slower
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = draw()
    return box


@dataclasses.dataclass(frozen=True)
class PhotometricParams:
    """One draw of mmseg PhotoMetricDistortion (None = that step is skipped)."""
    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: int | None


def draw_photometric(rng: np.random.Generator, brightness_delta: int = 32, contrast_range=(0.5, 1.5),
                     saturation_range=(0.5, 1.5), hue_delta: int = 18) -> PhotometricParams:
    """Draws the distortion parameters in mmseg's order of random calls (each step applied with p = 0.5)."""
    brightness = rng.uniform(-brightness_delta, brightness_delta) if rng.integers(2) else None
    contrast_first = bool(rng.integers(2) == 1)
    contrast = rng.uniform(*contrast_range) if rng.integers(2) else None
    saturation = rng.uniform(*saturation_range) if rng.integers(2) else None
    hue = int(rng.integers(-hue_delta, hue_delta)) if rng.integers(2) else None
    return PhotometricParams(brightness, contrast, contrast_first, saturation, hue)


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric(img: np.ndarray, p: PhotometricParams) -> np.ndarray:
    """Applies one PhotometricParams draw to an RGB uint8 image (H, W, 3), as mmseg does to its BGR image."""
    if p.brightness is not None:
        img = _convert(img, beta=p.brightness)
    if p.contrast_first and p.contrast is not None:
        img = _convert(img, alpha=p.contrast)
    if p.saturation is not None:                      # mmseg converts to HSV and back once per step
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=p.saturation)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if p.hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + p.hue) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if not p.contrast_first and p.contrast is not None:
        img = _convert(img, alpha=p.contrast)
    return img


def _augment(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, *, base_size: Sequence[int],
             scale_range: Sequence[float], crop_size: Sequence[int], cat_max_ratio: float, flip_prob: float,
             photometric_distortion: bool, ignore_index: int):
    """Resize -> crop -> flip -> photometric of one clip: uint8 (T, h, w, 3) and labels (T, h, w), h, w <= crop."""
    if images.ndim != 4 or images.shape[:3] != labels.shape:
        raise ValueError(f"clip images {images.shape} and labels {labels.shape} do not match: need (T, H, W, 3) "
                         "and (T, H, W)")
    ratio = rng.uniform(scale_range[0], scale_range[1])
    scale = (int(base_size[0] * ratio), int(base_size[1] * ratio))
    images, labels = resize_clip(images, labels, rescale_size(images.shape[1:3], scale))
    y0, y1, x0, x1 = crop_box(rng, labels, tuple(crop_size), cat_max_ratio, ignore_index)
    images, labels = images[:, y0:y1, x0:x1], labels[:, y0:y1, x0:x1]
    if rng.uniform() < flip_prob:
        images, labels = images[:, :, ::-1], labels[:, :, ::-1]
    if photometric_distortion:
        params = draw_photometric(rng)
        images = np.stack([photometric(np.ascontiguousarray(im), params) for im in images])
    return images, labels


def _padded_labels(labels, crop_size, ignore_index):
    """uint8 labels padded with `ignore_index` to the crop (uint8: a quarter of int32's bytes to the device)."""
    if not 0 <= ignore_index <= 255:
        raise ValueError(f"config.data.ignore_index={ignore_index}: labels travel as uint8, need 0..255")
    t, h, w = labels.shape
    out = np.full((t, *crop_size), ignore_index, np.uint8)
    out[:, :h, :w] = labels
    return out


def augment_clip(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, *, base_size: Sequence[int],
                 scale_range: Sequence[float], crop_size: Sequence[int], cat_max_ratio: float, flip_prob: float,
                 photometric_distortion: bool, mean: Sequence[float], std: Sequence[float], ignore_index: int = 255):
    """The training augmentation of one clip. images: uint8 (T, H, W, 3) RGB; labels: uint8 (T, H, W) train ids.

    Returns (float32 (T, ch, cw, 3) normalised images, uint8 (T, ch, cw) labels)."""
    images, labels = _augment(rng, images, labels, base_size=base_size, scale_range=scale_range,
                              crop_size=crop_size, cat_max_ratio=cat_max_ratio, flip_prob=flip_prob,
                              photometric_distortion=photometric_distortion, ignore_index=ignore_index)
    t, h, w = labels.shape
    out_img = np.zeros((t, *crop_size, 3), np.float32)
    normalize(images, mean, std, out=out_img[:, :h, :w])
    return out_img, _padded_labels(labels, tuple(crop_size), ignore_index)


def augment_clip_uint8(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, *,
                       base_size: Sequence[int], scale_range: Sequence[float], crop_size: Sequence[int],
                       cat_max_ratio: float, flip_prob: float, photometric_distortion: bool, ignore_index: int = 255,
                       **unused):
    """`augment_clip` without the normalisation (done on the accelerator: 4x less to copy, half the CPU work).

    Returns (uint8 (T, ch, cw, 3) images padded with 0, uint8 (T, ch, cw) labels, int32 (2,) the valid (h, w)
    top-left extent: `normalize_padded` turns the images into exactly what `augment_clip` returns)."""
    del unused   # mean / std: applied on the device
    images, labels = _augment(rng, images, labels, base_size=base_size, scale_range=scale_range,
                              crop_size=crop_size, cat_max_ratio=cat_max_ratio, flip_prob=flip_prob,
                              photometric_distortion=photometric_distortion, ignore_index=ignore_index)
    t, h, w = labels.shape
    out_img = np.zeros((t, *crop_size, 3), np.uint8)
    out_img[:, :h, :w] = images
    return out_img, _padded_labels(labels, tuple(crop_size), ignore_index), np.array([h, w], np.int32)
