"""Reading the built records (VSPW, ADE20K, COCO panoptic): locate a build, open a split, decode frames and
masks, iterate whole videos.

Records are read with `tfds.builder_from_directory(...).as_data_source(split)` (ArrayRecord, random access, no
TensorFlow). The JPEG stays undecoded until `decode_image`, so metadata lookups (clip sampling) cost no decoding.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from stcl_jax.data.datasets import vspw
from stcl_jax.data.formats import BUILDS, VSPW

_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _newest_complete(parent: str) -> str | None:
    versions = []
    if os.path.isdir(parent):
        versions = [v for v in os.listdir(parent)
                    if _VERSION.match(v) and os.path.isfile(os.path.join(parent, v, "dataset_info.json"))]
    if not versions:
        return None
    return os.path.join(parent, max(versions, key=lambda v: tuple(int(x) for x in v.split("."))))


def resolve_dataset_dir(data_dir: str) -> str:
    """The tfds version folder of a build: `data_dir` itself if it holds dataset_info.json, else the newest
    complete `data_dir/<name>/<config>/<version>` of the one dataset built there (vspw/480p, ade20k/scene_parsing
    or coco_panoptic/semantic; incomplete.* folders of interrupted builds are never picked). Several different
    datasets in `data_dir` raise ValueError: pass the version folder of the one meant."""
    if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        return data_dir
    found = [d for d in (_newest_complete(os.path.join(data_dir, n, c)) for n, c in BUILDS) if d]
    if len(found) > 1:
        raise ValueError(f"{data_dir} holds builds of several datasets ({', '.join(found)}): pass the one meant "
                         "as <data_dir>/<name>/<config>/<version>")
    if not found:
        raise FileNotFoundError(
            f"no complete VSPW build (nor ADE20K / COCO panoptic build) in {data_dir}: expected "
            f"{os.path.join(data_dir, *VSPW[:2])}/<version>/dataset_info.json (or "
            f"ade20k/scene_parsing/, coco_panoptic/semantic/). Build it with `python -m stcl_jax.data.build "
            f"[--dataset ...] --data-root PATH --output {data_dir}` (rerun it if it was interrupted)")
    return found[0]


def dataset_name(data_dir: str) -> str:
    """"vspw", "ade20k" or "coco_panoptic": the dataset of the build at `data_dir` (as resolve_dataset_dir)."""
    with open(os.path.join(resolve_dataset_dir(data_dir), "dataset_info.json")) as f:
        return json.load(f)["name"]


def dataset_class_names(data_dir: str) -> list[str]:
    """Class names of the build at `data_dir`, index = raw mask value - 1 (its metadata.json; VSPW builds made
    before that file existed get vspw.CLASS_NAMES)."""
    import tensorflow_datasets as tfds

    path = resolve_dataset_dir(data_dir)
    names = (tfds.builder_from_directory(path).info.metadata or {}).get("class_names")
    if names:
        return list(names)
    if dataset_name(path) == VSPW[0]:
        return list(vspw.CLASS_NAMES)
    raise ValueError(f"the build at {path} has no class names (metadata.json): rebuild it with this version")


def open_split(data_dir: str, split: str):
    """Random-access source of the records of `split` (dicts as written by the build; image/mask left encoded,
    text fields as bytes)."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(resolve_dataset_dir(data_dir))
    if split not in builder.info.splits:
        raise ValueError(f"split {split!r} is not in the build at {data_dir}: it has {sorted(builder.info.splits)}")
    info = builder.info.splits[split]
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    return RecordSource(source, split, [os.fspath(p) for p in info.filepaths], list(info.shard_lengths))


class RecordReadError(ValueError):
    """A record that cannot be read (a corrupt or truncated shard); the message names the shard and record."""


class RecordSource:
    """The records of one split (`len`, `source[i]`), as tfds' data source, except that a failed read names the
    shard file and the record's index in the split and in that shard (instead of ArrayRecord's bare "chunk data
    hash mismatch ... at <byte offset>")."""

    def __init__(self, source, split: str, shard_paths: list[str], shard_lengths: list[int]):
        self._source, self.split = source, split
        self._shards = list(zip(shard_paths, np.cumsum([0, *shard_lengths[:-1]]).tolist(), shard_lengths))

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        try:
            return self._source[index]
        except IndexError:
            raise
        except Exception as e:  # array_record raises RuntimeError / OSError / ValueError on corrupt data
            raise RecordReadError(f"{self.locate(index)}: unreadable ({type(e).__name__}: {e}); the build is "
                                  "damaged: rebuild it (python -m stcl_jax.data.build)") from e

    def locate(self, index: int) -> str:
        """'record I of split S (record J of shard FILE)'."""
        index = int(index) + (len(self) if int(index) < 0 else 0)
        for path, start, length in self._shards:
            if start <= index < start + length:
                return f"record {index} of split {self.split!r} (record {index - start} of shard {path})"
        return f"record {index} of split {self.split!r}"


def decode_image(jpeg: bytes, where: str = "a frame of the build") -> np.ndarray:
    """JPEG bytes -> uint8 (H, W, 3) RGB; `where` names the record in the error of an undecodable one."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"could not decode the JPEG of {where}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def record_name(record, split: str = "") -> str:
    """'frame F of video V' (of split S): how errors name a record."""
    return (f"frame {text(record['frame_name'])} of video {text(record['video'])}"
            + (f" (split {split!r})" if split else ""))


def stack_video_frames(records_of_video, split: str = "") -> np.ndarray:
    """The decoded frames (F, H, W, 3) of one video's records; a frame whose size differs from the first's (a
    build made before the build refused those) raises ValueError naming it."""
    frames = [decode_image(r["image"], record_name(r, split)) for r in records_of_video]
    for r, f in zip(records_of_video, frames):
        if f.shape != frames[0].shape:
            raise ValueError(f"{record_name(r, split)} is {f.shape[1]}x{f.shape[0]} but the video's first frame is "
                             f"{frames[0].shape[1]}x{frames[0].shape[0]}: rebuild the dataset (the build refuses "
                             "videos of mixed frame sizes)")
    return np.stack(frames)


def decode_mask(png: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W) raw VSPW values (palette PNGs give their indices, as the official tools read)."""
    return np.asarray(Image.open(io.BytesIO(png)))


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def iterate_videos(data_dir: str, split: str, max_videos: int = 0, *, process_index: int = 0, process_count: int = 1
                   ) -> Iterator[tuple[str, list[str], np.ndarray, np.ndarray | None]]:
    """Whole videos of `split`, in frame order, at the original size, no augmentation.

    Yields (video_name, frame_names, frames uint8 (F, H, W, 3), raw_masks uint8 (F, H, W) or None); masks are None
    when no frame of the video is labelled, and 255 (void) for an unlabelled frame of a partly labelled video.
    `max_videos` (0 = all) counts the videos of the split; of those, this process gets video k when
    k % process_count == process_index, and the others' frames are never decoded."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
    source = open_split(data_dir, split)
    i, done = 0, 0
    while i < len(source) and (max_videos <= 0 or done < max_videos):
        first = source[i]
        n = int(first["num_frames"])
        if done % process_count == process_index:
            recs = [first] + [source[i + t] for t in range(1, n)]
            frames = stack_video_frames(recs, split)
            masks = None
            if any(r["has_label"] for r in recs):
                masks = np.stack([decode_mask(r["mask"]) if r["has_label"]
                                  else np.full(frames.shape[1:3], 255, np.uint8) for r in recs])
            yield text(first["video"]), [text(r["frame_name"]) for r in recs], frames, masks
        i, done = i + n, done + 1
