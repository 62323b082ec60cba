r"""Segments a video or a folder of frames: label PNGs, colour overlays and an overlay video.

    python -m stcl_jax.predict --checkpoint CKPT --input FRAMES_DIR|VIDEO.mp4 --output OUT [--vspw-ids]
        [--config CFG[:arg]] [--tta] [--ensemble CKPT2 ...] [--mode slide|whole] [--alpha 0.5] [--fps 15]

Output:
  OUT/labels/<frame>.png    single-channel labels: train ids 0..123, or VSPW's 1..124 with --vspw-ids (the
                            benchmark's submission format)
  OUT/overlay/<frame>.jpg   the frame blended with the VSPW palette colour of its label
  OUT/overlay.mp4           the overlays as a video (--fps, default: the input video's rate, else 15)
Frame names: a folder's image files (jpg/jpeg/png, sorted by name) keep their names; a video's frames are named
00000000, 00000001, ... Frames are read and segmented in chunks, so long videos need no more memory than a chunk.
The inference flags are those of `stcl_jax.evaluate` (`--config`, `--tta`, `--ensemble`, ...).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterator

import cv2
import numpy as np

from stcl_jax import cli_errors
from stcl_jax.evaluation import cli

log = logging.getLogger("stcl_jax.predict")
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


# ------------------------------------------------------------------------------------------------------ input --
def _read_rgb(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"frame {path} could not be read as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_frames(source: str, chunk: int = 32) -> tuple[Iterator[tuple[list[str], np.ndarray]], float | None]:
    """(iterator over (frame names, uint8 RGB (n, H, W, 3)) chunks, the video's fps or None for a folder)."""
    if os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if n.lower().endswith(IMAGE_EXTS) and not n.startswith("."))
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

    return video(), fps


# ----------------------------------------------------------------------------------------------------- output --
def overlay(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 frame blended with the palette colours of train ids (H, W)."""
    from stcl_jax.data import vspw

    colours = vspw.colorize(ids).astype(np.float32)
    return np.clip((1 - alpha) * frame.astype(np.float32) + alpha * colours + 0.5, 0, 255).astype(np.uint8)


def predict_source(predictor, source: str, output: str, *, vspw_ids: bool = False, alpha: float = 0.5,
                   fps: float | None = None, chunk: int = 32) -> int:
    """Segments every frame of `source` with `predictor` and writes OUT/labels, OUT/overlay, OUT/overlay.mp4;
    returns the number of frames."""
    from stcl_jax.evaluation.runner import write_prediction

    chunks, video_fps = read_frames(source, chunk)
    os.makedirs(os.path.join(output, "overlay"), exist_ok=True)
    writer, count, start = None, 0, time.time()
    try:
        for names, frames in chunks:
            ids = predictor(frames)
            for name, frame, pred in zip(names, frames, ids):
                write_prediction(os.path.join(output, "labels", name + ".png"), pred, vspw_ids)
                bgr = cv2.cvtColor(overlay(frame, pred, alpha), cv2.COLOR_RGB2BGR)
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
                       alpha=a.alpha, fps=a.fps, chunk=a.chunk)
    log.info("%d frames segmented into %s", n, a.output)
    return 0


if __name__ == "__main__":
    cli_errors.run(main)
