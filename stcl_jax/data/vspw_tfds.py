"""The tensorflow-datasets builder of VSPW (ArrayRecord, no TensorFlow); run it with `stcl_jax.data.build`.

Kept apart from the CLI module so `python -m stcl_jax.data.build` defines the builder class in this package (tfds
locates a builder by its module). The record format is documented in `stcl_jax.data.build`.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from stcl_jax.data import scan, vspw

NAME, CONFIG, VERSION = "vspw", "480p", "1.0.0"
EXTRA = "extra"
LABELS = {"train": "required", "val": "required", "test": "none", EXTRA: "optional"}


class BadInputError(ValueError):
    """An input file or video that cannot go into the dataset; the message names it."""


def dataset_dir(output_dir: str) -> str:
    """The tfds folder that `build_dataset(..., output_dir)` fills."""
    return os.path.join(output_dir, NAME, CONFIG, VERSION)


class Vspw(tfds.core.GeneratorBasedBuilder):
    """VSPW (Miao et al., CVPR 2021): 3,536 videos, 124 classes, one record per frame."""

    VERSION = tfds.core.Version(VERSION)
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=CONFIG, description="VSPW_480p release")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Extract VSPW_480p and pass its folder (with data/ and train.txt) as manual_dir."

    def __init__(self, *, splits: Sequence[str] = ("train", "val"), workers: int = 0, skip_bad: bool = False,
                 extra_frames: str | None = None, progress: bool = True, **kwargs):
        self._splits, self._workers, self._skip_bad = tuple(splits), workers, skip_bad
        self._extra, self._progress = extra_frames, progress
        self.skipped: list[scan.Bad] = []
        self.counts: dict[str, dict[str, int]] = {}
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "mask": tfds.features.Tensor(shape=(), dtype=np.object_),
                "has_label": tfds.features.Tensor(shape=(), dtype=np.bool_),
                "video": tfds.features.Text(),
                "frame_name": tfds.features.Text(),
                "video_index": tfds.features.Tensor(shape=(), dtype=np.int32),
                "frame_index": tfds.features.Tensor(shape=(), dtype=np.int32),
                "num_frames": tfds.features.Tensor(shape=(), dtype=np.int32),
                "video_start": tfds.features.Tensor(shape=(), dtype=np.int64),
                "height": tfds.features.Tensor(shape=(), dtype=np.int32),
                "width": tfds.features.Tensor(shape=(), dtype=np.int32),
            }),
            disable_shuffling=True,   # records stay in video / frame order: `video_start` relies on it
            homepage="https://www.vspwdataset.com/",
        )

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
        pool = multiprocessing.get_context("spawn").Pool(self._workers) if self._workers > 0 else None
        results = pool.imap(scan.scan_video_star, jobs, chunksize=1) if pool else map(scan.scan_video_star, jobs)
        start, n_videos, t0 = 0, 0, time.time()
        try:
            for i, res in enumerate(results):
                if res.bad:
                    if not self._skip_bad:
                        raise BadInputError(f"bad input in split {split!r}: {res.bad[0]}"
                                            + (f" (and {len(res.bad) - 1} more in this video)" if len(res.bad) > 1
                                               else "") + "; fix it or rerun with --skip-bad to leave it out")
                    self.skipped.extend(res.bad)
                n = len(res.frames)
                for t, fr in enumerate(res.frames):
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
        finally:
            if pool:
                pool.terminate()
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
