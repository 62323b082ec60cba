"""What every tensorflow-datasets builder of the build shares: the record features, the `RecordBuilder` base class
(class names in the metadata, the build's bookkeeping), the worker pool and the bad-input errors.
"""

from __future__ import annotations

import multiprocessing
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from stcl_jax.data.build.checks import Bad


class BadInputError(ValueError):
    """An input file or video that cannot go into the dataset; the message names it."""


def record_features() -> tfds.features.FeaturesDict:
    """The features of every build (VSPW, ADE20K, COCO panoptic): see `stcl_jax.data.build.build`."""
    return tfds.features.FeaturesDict({
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
    })


def map_jobs(fn, jobs: list, workers: int, chunksize: int = 1) -> Iterator:
    """`map(fn, jobs)`, in order, in `workers` spawned processes when workers > 0 (terminated when the caller
    stops iterating)."""
    if workers <= 0:
        yield from map(fn, jobs)
        return
    pool = multiprocessing.get_context("spawn").Pool(workers)
    try:
        yield from pool.imap(fn, jobs, chunksize=chunksize)
    finally:
        pool.terminate()


def bad_input(split: str, bad: list[Bad], unit: str) -> BadInputError:
    """The error that stops a build at the first bad input of `split` (`unit` = "video" or "image")."""
    more = f" (and {len(bad) - 1} more in this {unit})" if len(bad) > 1 else ""
    return BadInputError(f"bad input in split {split!r}: {bad[0]}{more}; fix it or rerun with --skip-bad to leave "
                         "it out")


def empty_split(split: str, bad: list[Bad], unit: str) -> BadInputError:
    """The error of a split left with no record because every input was bad (with --skip-bad)."""
    listed = "; ".join(str(b) for b in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
    return BadInputError(f"split {split!r} has no usable {unit}: all {len(bad)} bad inputs were left out "
                         f"({listed or 'no input listed'})")


class RecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """What every build shares: the features, the class names in the metadata, and the build's bookkeeping
    (skipped inputs, per-split counts and pixels per raw mask value) that `build_dataset` reports."""

    CLASS_NAMES: Sequence[str] = ()
    HOMEPAGE = ""

    def __init__(self, *, splits: Sequence[str] = ("train", "val"), workers: int = 0, skip_bad: bool = False,
                 progress: bool = True, **kwargs):
        self._splits, self._workers, self._skip_bad, self._progress = tuple(splits), workers, skip_bad, progress
        self.skipped: list[Bad] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.pixels: dict[str, np.ndarray] = {}   # split -> pixels per raw mask value (256,)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=record_features(),
            disable_shuffling=True,   # records stay in video / frame order: `video_start` relies on it
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(class_names=list(self.CLASS_NAMES)),
        )
