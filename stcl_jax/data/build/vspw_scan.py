"""Reads and checks the files of one VSPW video; the per-video work unit of `stcl_jax.data.build`.

Kept free of tensorflow-datasets and grain so `build --workers K` processes start quickly. Every problem found is
returned as a `Bad(path, reason)`; the caller decides whether it stops the build or goes into the report.
"""

from __future__ import annotations

import dataclasses
import io
import os

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


@dataclasses.dataclass
class VideoScan:
    video: str
    frames: list[Frame]
    bad: list[Bad]


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


def check_mask(png: bytes, size: tuple[int, int]) -> np.ndarray:
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


def scan_video(root: str, video: str, labels: str) -> VideoScan:
    """Reads and checks every frame of `video` under `root` (a VSPW_480p-style folder).

    labels: "required" (train/val: every frame needs a mask), "none" (test: masks ignored) or "optional" (extra
    frames: a frame is labelled if its mask exists, e.g. pseudo labels). Frames are listed by `vspw.list_folder`
    (numeric order, .jpg/.jpeg in any case); each file it does not accept is a Bad, as is a frame whose size
    differs from the video's first frame."""
    if labels not in ("required", "none", "optional"):
        raise ValueError(f"labels={labels!r}: expected 'required', 'none' or 'optional'")
    origin = os.path.join(vspw.video_dir(root, video), "origin")
    if not os.path.isdir(origin):
        return VideoScan(video, [], [Bad(origin, f"video {video!r} is listed but its frame folder is missing")])
    files, problems = vspw.list_folder(origin, vspw.FRAME_EXTS, "frame")
    bad = [Bad(path, reason) for path, reason in problems]
    if not files:
        return VideoScan(video, [], bad + [Bad(origin, f"video {video!r} is listed but has no "
                                                       f"{'/'.join(vspw.FRAME_EXTS)} frames")])
    masks = {}
    mask_dir = os.path.join(vspw.video_dir(root, video), "mask")
    if labels != "none" and os.path.isdir(mask_dir):
        mask_files, problems = vspw.list_folder(mask_dir, vspw.MASK_EXTS, "mask")
        masks = {stem: os.path.join(mask_dir, fname) for stem, fname in mask_files}
        bad += [Bad(path, reason) for path, reason in problems]
    frames, size = [], None
    for name, fname in files:
        fpath = os.path.join(origin, fname)
        try:
            with open(fpath, "rb") as f:
                jpeg = f.read()
            h, w = check_frame(jpeg)
            size = size or (h, w, fpath)
            if (h, w) != size[:2]:
                raise ValueError(f"frame size {h}x{w} differs from {size[0]}x{size[1]} of the video's first frame "
                                 f"{size[2]}: every frame of video {video!r} must have one size")
        except (OSError, ValueError) as e:
            bad.append(Bad(fpath, str(e)))
            continue
        png = pixels = None
        if name in masks:
            try:
                with open(masks[name], "rb") as f:
                    png = f.read()
                pixels = check_mask(png, (h, w))
            except (OSError, ValueError) as e:
                bad.append(Bad(masks[name], str(e)))
                continue
        elif labels == "required":
            bad.append(Bad(vspw.mask_path(root, video, name), "frame has no mask in a labelled split"))
            continue
        frames.append(Frame(name, jpeg, png, h, w, pixels))
    for name in sorted(set(masks) - {stem for stem, _ in files}, key=int):
        bad.append(Bad(masks[name], "mask has no frame"))
    return VideoScan(video, frames, bad)


def scan_video_star(args) -> VideoScan:
    """`scan_video(*args)`, for multiprocessing's imap."""
    return scan_video(*args)
