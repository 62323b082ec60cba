r"""Segments a video or a folder of frames: label PNGs, colour overlays and an overlay video.

    python -m stcl_jax.predict --checkpoint CKPT --input FRAMES_DIR|VIDEO.mp4 --output OUT [--vspw-ids]
        [--config CFG[:arg]] [--tta] [--ensemble CKPT2 ...] [--mode slide|whole] [--alpha 0.5] [--fps 15]

Output:
  OUT/labels/<frame>.png    single-channel labels: train ids 0..123, or VSPW's 1..124 with --vspw-ids (the
                            benchmark's submission format)
  OUT/labels/label_ids.json which of the two the PNGs hold (`stcl_jax.evaluate --predictions` reads it)
  OUT/overlay/<frame>.jpg   the frame blended with the VSPW palette colour of its label, with a legend of the
                            classes present (largest first; --no-legend without)
  OUT/overlay.mp4           the overlays as a video (--fps, default: the input video's rate, else 15)
Frame names: a folder's image files (jpg/jpeg/png in any letter case, in natural order: frame_9 before frame_10)
keep their names; other files are skipped with a warning listing them, two files of one name (x.jpg + x.png) and a
truncated or corrupt image are errors naming them. A video's frames are named 00000000, 00000001, ...; a video
that ends before the frame count of its header is an error once its readable frames are written
(--allow-truncated: a warning). Frames are read and segmented in chunks, so long videos need no more memory than
a chunk.
The inference flags are those of `stcl_jax.evaluate` (`--config`, `--tta`, `--ensemble`, ...).
"""

from __future__ import annotations

import io
import logging
import os
import re
import time
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from stcl_jax import cli_errors
from stcl_jax.evaluation import cli

log = logging.getLogger("stcl_jax.predict")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")   # frame files of a folder, in any letter case


# ------------------------------------------------------------------------------------------------------ input --
def _read_rgb(path: str) -> np.ndarray:
    """uint8 (H, W, 3) RGB of an image file; a truncated or corrupt file raises ValueError naming it (opencv
    alone would decode a truncated JPEG, grey-filling the missing part)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()                                  # every pixel decoded: truncation raises
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... on corrupt files
        raise ValueError(f"frame {path} could not be read as an image ({type(e).__name__}: {e})") from None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"frame {path} could not be read as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _natural_key(name: str) -> tuple:
    """Sort key putting frame_9 before frame_10: digit runs compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)), name


def list_frame_files(folder: str) -> list[str]:
    """The image files of a frame folder (IMAGE_EXTS in any case) in natural order (numbers as numbers). Two
    files of one name (x.jpg + x.png: one label PNG) raise ValueError naming both; other files are skipped with a
    warning that lists them."""
    names, others, stems = [], [], {}
    for n in sorted(os.listdir(folder)):
        if n.startswith("."):
            continue
        if not n.lower().endswith(IMAGE_EXTS):
            others.append(n)
            continue
        stem = os.path.splitext(n)[0]
        if stem in stems:
            raise ValueError(f"--input {folder}: {os.path.join(folder, stems[stem])} and {os.path.join(folder, n)} "
                             f"are both frame {stem!r} (they would write one label file): keep one")
        stems[stem] = n
        names.append(n)
    if others:
        log.warning("--input %s: skipping %d files that are not %s frames: %s", folder, len(others),
                    "/".join(IMAGE_EXTS), ", ".join(others[:10]) + (" ..." if len(others) > 10 else ""))
    return sorted(names, key=_natural_key)


def read_frames(source: str, chunk: int = 32, *, allow_truncated: bool = False
                ) -> tuple[Iterator[tuple[list[str], np.ndarray]], float | None]:
    """(iterator over (frame names, uint8 RGB (n, H, W, 3)) chunks, the video's fps or None for a folder).

    A video that ends before the frame count of its header raises ValueError once its readable frames are
    given (`allow_truncated`: a warning instead)."""
    if os.path.isdir(source):
        names = list_frame_files(source)
        if not names:
            raise FileNotFoundError(f"--input {source}: no {'/'.join(IMAGE_EXTS)} frames in this folder")

        def folder():
            size = None
            for s in range(0, len(names), chunk):
                frames = [_read_rgb(os.path.join(source, n)) for n in names[s : s + chunk]]
                for n, f in zip(names[s : s + chunk], frames):
                    size = size or f.shape
                    if f.shape != size:
                        raise ValueError(f"frame {os.path.join(source, n)} is {f.shape[1]}x{f.shape[0]}, but the "
                                         f"first frame is {size[1]}x{size[0]}: all frames must have one size")
                yield [os.path.splitext(n)[0] for n in names[s : s + chunk]], np.stack(frames)

        return folder(), None
    if not os.path.isfile(source):
        raise FileNotFoundError(f"--input {source} is neither a folder of frames nor a video file")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise ValueError(f"--input {source}: opencv cannot open this video")
    fps = capture.get(cv2.CAP_PROP_FPS) or None
    declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    def video():
        index = 0
        try:
            while True:
                frames = []
                while len(frames) < chunk:
                    ok, bgr = capture.read()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
                if not frames:
                    break
                yield [f"{index + i:08d}" for i in range(len(frames))], np.stack(frames)
                index += len(frames)
        finally:
            capture.release()
        if index == 0:
            raise ValueError(f"--input {source}: the video has no readable frame")
        if index < declared:
            message = (f"--input {source}: only {index} of the {declared} frames its header declares could be "
                       f"decoded (truncated or corrupt video); frames {index}..{declared - 1} have no prediction")
            if not allow_truncated:
                raise ValueError(message + " (pass --allow-truncated to accept this)")
            log.warning(message)

    return video(), fps


# ----------------------------------------------------------------------------------------------------- output --
def overlay(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 frame blended with the palette colours of train ids (H, W)."""
    from stcl_jax.data.datasets import vspw

    colours = vspw.colorize(ids).astype(np.float32)
    return np.clip((1 - alpha) * frame.astype(np.float32) + alpha * colours + 0.5, 0, 255).astype(np.uint8)


def class_names_for(num_classes: int) -> list[str]:
    """The class names of a model predicting `num_classes` classes: VSPW's (124), COCO panoptic's (133) or
    ADE20K's (150), else "class <id>"."""
    from stcl_jax.data.datasets import ade20k, coco_panoptic, vspw

    for names in (vspw.CLASS_NAMES, coco_panoptic.CLASS_NAMES, ade20k.CLASS_NAMES):
        if len(names) == num_classes:
            return list(names)
    return [f"class {k}" for k in range(num_classes)]


def draw_legend(image: np.ndarray, ids: np.ndarray, class_names, max_rows: int = 8) -> np.ndarray:
    """`image` (RGB uint8, H, W, 3) with a legend in its top-left corner: a palette swatch and the name of each
    class present in `ids` (train ids), largest area first, at most `max_rows` (then "+N more")."""
    from stcl_jax.data.datasets import vspw

    counts = np.bincount(np.asarray(ids, np.uint8).ravel(), minlength=256)[: len(class_names)]
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    rows = [(c, class_names[c]) for c in present[:max_rows]]
    if len(present) > max_rows:
        rows.append((None, f"+{len(present) - max_rows} more"))
    out = image.copy()
    h = out.shape[0]
    row_h = max(8, h // 20)
    scale = row_h / 26.0
    colours = vspw.colorize(np.array([c for c, _ in rows if c is not None], np.uint8))
    for k, (c, name) in enumerate(rows):
        top = k * row_h
        width = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] + row_h + 4
        out[top : top + row_h, :width] = (out[top : top + row_h, :width] * 0.3).astype(np.uint8)  # dark backing
        if c is not None:
            out[top + 1 : top + row_h - 1, 1 : row_h - 1] = colours[k]
        cv2.putText(out, name, (row_h + 2, top + row_h - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def predict_source(predictor, source: str, output: str, *, vspw_ids: bool = False, alpha: float = 0.5,
                   fps: float | None = None, chunk: int = 32, class_names=None, legend: bool = True,
                   allow_truncated: bool = False) -> int:
    """Segments every frame of `source` with `predictor` and writes OUT/labels (+ label_ids.json, the id space of
    the PNGs), OUT/overlay (with a legend of the classes present, `class_names`, default VSPW's),
    OUT/overlay.mp4; returns the number of frames. A truncated video raises after its readable frames are
    written (see `read_frames`)."""
    from stcl_jax.data.datasets import vspw
    from stcl_jax.evaluation.runner import write_id_space, write_prediction

    names_of_classes = list(vspw.CLASS_NAMES if class_names is None else class_names)
    chunks, video_fps = read_frames(source, chunk, allow_truncated=allow_truncated)
    os.makedirs(os.path.join(output, "overlay"), exist_ok=True)
    write_id_space(os.path.join(output, "labels"), "vspw" if vspw_ids else "train", len(names_of_classes))
    writer, count, start = None, 0, time.time()
    try:
        for names, frames in chunks:
            ids = predictor(frames)
            for name, frame, pred in zip(names, frames, ids):
                write_prediction(os.path.join(output, "labels", name + ".png"), pred, vspw_ids)
                image = overlay(frame, pred, alpha)
                if legend:
                    image = draw_legend(image, pred, names_of_classes)
                bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                cv2.imwrite(os.path.join(output, "overlay", name + ".jpg"), bgr)
                if writer is None:
                    path = os.path.join(output, "overlay.mp4")
                    rate = fps or video_fps or 15.0
                    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), rate, bgr.shape[1::-1])
                    if not writer.isOpened():
                        raise RuntimeError(f"opencv cannot write {path} (mp4v codec)")
                writer.write(bgr)
            count += len(frames)
            log.info("%d frames, %.2f frames/s", count, count / max(time.time() - start, 1e-9))
    finally:
        if writer is not None:
            writer.release()
    return count


def main(argv=None) -> int:
    p = cli_errors.ArgumentParser(prog="python -m stcl_jax.predict", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="params-only model dir or training workdir")
    p.add_argument("--input", required=True, help="folder of frames or a video file")
    p.add_argument("--output", required=True)
    p.add_argument("--vspw-ids", action="store_true", help="write VSPW's 1..124 instead of train ids 0..123")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the label colours")
    p.add_argument("--fps", type=float, default=None, help="overlay video frame rate")
    p.add_argument("--chunk", type=int, default=32, help="frames read and segmented at a time")
    p.add_argument("--no-legend", action="store_true", help="overlays without the legend of the classes present")
    p.add_argument("--allow-truncated", action="store_true", help="a video with fewer decodable frames than its "
                   "header declares is a warning, not an error")
    cli.add_inference_arguments(p)
    cli_errors.add_verbose_flag(p)
    a = p.parse_args(argv)
    if not 0.0 <= a.alpha <= 1.0:
        p.error(f"--alpha must be in [0, 1], got {a.alpha}")
    cli_errors.quiet_logging(a.verbose)
    members, options = cli.members_and_options(a)
    from stcl_jax.evaluation import inference

    log.info("inference: %s, %d model(s)", options, len(members))
    n = predict_source(inference.Predictor(members, **options), a.input, a.output, vspw_ids=a.vspw_ids,
                       alpha=a.alpha, fps=a.fps, chunk=a.chunk, legend=not a.no_legend,
                       class_names=class_names_for(cli.num_classes(members[0][1])),
                       allow_truncated=a.allow_truncated)
    log.info("%d frames segmented into %s", n, a.output)
    return 0


if __name__ == "__main__":
    cli_errors.run(main)
