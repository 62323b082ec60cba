"""Reads and checks the files of one ADE20K or COCO panoptic image: the per-image work unit of the image builds.

Like `vspw_scan` (its VSPW counterpart) it runs in the `--workers` processes. Each function returns a
`checks.Frame` (frame name = image file stem; mask = the PNG bytes to store; pixels = the histogram of the stored
mask) or a `checks.Bad(path, reason)`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from stcl_jax.data.build.checks import Bad, Frame, check_ade20k_mask, check_frame, open_checked
from stcl_jax.data.datasets import ade20k, coco_panoptic


def _read_image(path: str) -> tuple[bytes, int, int]:
    with open(path, "rb") as f:
        jpeg = f.read()
    return (jpeg, *check_frame(jpeg))


def scan_ade20k(job: tuple[str, str | None, str | None]) -> Frame | Bad:
    """job = (stem, image path or None, annotation path or None); None = the file is missing."""
    stem, image, mask = job
    if image is None:
        return Bad(mask, "annotation has no image")
    try:
        jpeg, h, w = _read_image(image)
    except (OSError, ValueError) as e:
        return Bad(image, str(e))
    if mask is None:
        return Bad(image, f"image has no annotation ({stem}{ade20k.MASK_EXT} missing in the annotations folder)")
    try:
        with open(mask, "rb") as f:
            png = f.read()
        pixels = check_ade20k_mask(png, (h, w))
    except (OSError, ValueError) as e:
        return Bad(mask, str(e))
    return Frame(stem, jpeg, png, h, w, pixels)


def encode_mask(mask: np.ndarray) -> bytes:
    """uint8 (H, W) raw values -> 8-bit greyscale (L) PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def scan_coco_panoptic(job: tuple[str, str, str | None, tuple[int, int], list[dict]], raw: dict[int, int]
                       ) -> Frame | Bad:
    """job = (stem, image path, panoptic PNG path or None (no annotation), (h, w) of the JSON, segments_info);
    raw = {category id: raw value}. The stored mask is the semantic map, encoded as an L PNG."""
    stem, image, png_path, json_size, segments = job
    try:
        jpeg, h, w = _read_image(image)
    except (OSError, ValueError) as e:
        return Bad(image, str(e))
    if png_path is None:
        return Bad(image, "image has no annotation in the panoptic JSON")
    if (h, w) != tuple(json_size):
        return Bad(image, f"image size {h}x{w} differs from the JSON's {json_size[0]}x{json_size[1]}")
    try:
        with open(png_path, "rb") as f:
            img = open_checked(f.read(), "PNG")
        if img.mode != "RGB":
            raise ValueError(f"panoptic PNG mode {img.mode}: expected RGB (segment id = R + 256 G + 256^2 B)")
        if (img.height, img.width) != (h, w):
            raise ValueError(f"panoptic PNG size {img.height}x{img.width} differs from its image's {h}x{w}")
        mask = coco_panoptic.panoptic_to_semantic(np.asarray(img), segments, raw)
    except (OSError, ValueError) as e:
        return Bad(png_path, str(e))
    return Frame(stem, jpeg, encode_mask(mask), h, w, np.bincount(mask.ravel(), minlength=256))
