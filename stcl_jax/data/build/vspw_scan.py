"""Reads and checks the files of one VSPW video; the per-video work unit of `stcl_jax.data.build`.

Runs in the `--workers` processes (no tensorflow-datasets code here; the file checks are in `checks`). Every problem
found is returned as a `Bad(path, reason)`; the caller decides whether it stops the build or goes into the report.
"""

from __future__ import annotations

import dataclasses
import os

from stcl_jax.data.build.checks import Bad, Frame, check_frame, check_vspw_mask
from stcl_jax.data.datasets import vspw


@dataclasses.dataclass
class VideoScan:
    video: str
    frames: list[Frame]
    bad: list[Bad]


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
                pixels = check_vspw_mask(png, (h, w))
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
