"""The tensorflow-datasets builder of VSPW (ArrayRecord, no TensorFlow); run it with `stcl_jax.data.build`.

Kept apart from the CLI (`build/__main__.py`) so `python -m stcl_jax.data.build` defines the builder class in this
package (tfds locates a builder by its module). The record format is documented in `stcl_jax.data.build.build`.
"""

from __future__ import annotations

import os
import time
from typing import Iterable

import numpy as np
import tensorflow_datasets as tfds

from stcl_jax.data.build import vspw_scan
from stcl_jax.data.build.base import RecordBuilder, bad_input, empty_split, map_jobs
from stcl_jax.data.datasets import vspw
from stcl_jax.data.formats import EXTRA, LABELS, VSPW


class Vspw(RecordBuilder):
    """VSPW (Miao et al., CVPR 2021): 3,536 videos, 124 classes, one record per frame."""

    name = VSPW[0]
    VERSION = tfds.core.Version(VSPW[2])
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=VSPW[1], description="VSPW_480p release")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Extract VSPW_480p and pass its folder (with data/ and train.txt) as manual_dir."
    CLASS_NAMES = vspw.CLASS_NAMES
    HOMEPAGE = "https://www.vspwdataset.com/"

    def __init__(self, *, extra_frames: str | None = None, **kwargs):
        self._extra = extra_frames
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        root = os.fspath(dl_manager.manual_dir)
        out = {}
        for split in self._splits:
            if split == EXTRA:
                if not self._extra:
                    raise ValueError(f"split {EXTRA!r} needs --extra-frames DIR")
                out[split] = self._generate_examples(self._extra, split, _extra_videos(self._extra))
            else:
                out[split] = self._generate_examples(root, split, vspw.read_split(root, split))
        return out

    def _generate_examples(self, root: str, split: str, videos: list[str]) -> Iterable:
        """Yields (key, example) for every kept frame, video by video, checking files in worker processes."""
        jobs = [(root, v, LABELS[split]) for v in videos]
        pixels = self.pixels.setdefault(split, np.zeros(256, np.int64))
        start, n_videos, t0 = 0, 0, time.time()
        bad_here = []
        for i, res in enumerate(map_jobs(vspw_scan.scan_video_star, jobs, self._workers)):
            if res.bad:
                if not self._skip_bad:
                    raise bad_input(split, res.bad, "video")
                self.skipped.extend(res.bad)
                bad_here.extend(res.bad)
            n = len(res.frames)
            for t, fr in enumerate(res.frames):
                if fr.pixels is not None:
                    pixels += fr.pixels
                yield f"{n_videos:06d}_{t:05d}", {
                    "image": fr.jpeg, "mask": fr.png or b"", "has_label": fr.png is not None,
                    "video": res.video, "frame_name": fr.name, "video_index": n_videos, "frame_index": t,
                    "num_frames": n, "video_start": start, "height": fr.height, "width": fr.width}
            if n:
                start, n_videos = start + n, n_videos + 1
            if self._progress and (i + 1) % 50 == 0:
                rate = start / max(time.time() - t0, 1e-9)
                eta = (len(jobs) - i - 1) * (time.time() - t0) / (i + 1)
                print(f"[build] {split}: {i + 1}/{len(jobs)} videos, {start} frames, {rate:.0f} frames/s, "
                      f"ETA {eta:.0f} s", flush=True)
        if not start:
            raise empty_split(split, bad_here, "frame")
        self.counts[split] = {"videos": n_videos, "frames": start}


def _extra_videos(root: str) -> list[str]:
    """Videos of an extra-frames folder: DIR/extra.txt if present, else every folder under DIR/data."""
    if os.path.isfile(vspw.split_file(root, EXTRA)):
        return vspw.read_split(root, EXTRA)
    data = os.path.join(root, "data")
    if not os.path.isdir(data):
        raise FileNotFoundError(f"extra frames folder {root} has no data/ folder: expected "
                                f"{root}/data/<video>/origin/<frame>.jpg (and optional mask/<frame>.png)")
    return sorted(d for d in os.listdir(data) if os.path.isdir(os.path.join(data, d)))
