"""Builds VSPW (or ADE20K / COCO panoptic) into ArrayRecord shards with tensorflow-datasets (no TensorFlow needed).

    python -m stcl_jax.data.build [--dataset vspw|ade20k|coco-panoptic] --data-root PATH --output DIR
                                  [--splits train,val] [--workers K] [--skip-bad] [--extra-frames DIR]

Output: `DIR/vspw/480p/1.0.0/` (tfds layout: `vspw-<split>.array_record-XXXXX-of-YYYYY`, dataset_info.json,
features.json, metadata.json with the class names), `DIR/ade20k/scene_parsing/1.0.0/` or
`DIR/coco_panoptic/semantic/1.0.0/`, and `DIR/build_report.json` (copied into the version folder, so each
dataset keeps its own when several share DIR): per split the counts, the skipped files, and `pixels`, the pixels
of the stored masks per raw value (256 counts). tfds writes into a temporary `incomplete.*` folder and renames it
only when every split is done, so an interrupted build never leaves shards that look complete: just rerun it (the
rerun deletes the left-over `incomplete.*` folder, saying so). A complete build is never changed: asking it for a
split it lacks is an error saying how to build one.
ADE20K and COCO panoptic images become single-frame videos in the same format (see `image_tfds`).

One record per frame, in video order and frame order (shuffling is disabled), with these features:
  image        the frame's JPEG bytes exactly as on disk (tfds Image, jpeg)
  mask         the mask's PNG bytes exactly as on disk, b"" for an unlabelled frame (raw VSPW values)
  has_label    whether `mask` holds a label
  video, frame_name        folder name and 8-digit frame name
  video_index  position of the video in its split;  frame_index, num_frames: position in / length of the video
  video_start  record index (within the split) of the video's first frame, so frame t + k of the same video is
               record `video_start + clip(frame_index + k, 0, num_frames - 1)`: an O(1) lookup
  height, width
Splits: train / val (every frame labelled), test (no labels), and with --extra-frames DIR a split "extra" made of
the videos under DIR/data (VSPW layout, listed in DIR/extra.txt if present, else every folder), each frame
labelled if a mask exists for it (pseudo labels) and unlabelled otherwise (frames to pseudo-label).

Bad input (corrupt JPEG/PNG, mask size differing from its frame, frame size differing from its video's first
frame, label value neither a class id nor void, frame without mask in a labelled split, listed video missing, a
file of a frame or mask folder that `vspw.list_folder` does not accept: another extension, a name that is not a
frame number, two files of one frame) stops the build with an error naming the file; with --skip-bad the frame (or
video, or file) is left out and listed in the report instead, and a split left with nothing is an error listing
the bad files. A video listed in two split files stops the build. The same holds for the images of
ADE20K and COCO panoptic (also: image without annotation, panoptic segment missing from the JSON).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

import tensorflow_datasets as tfds

from stcl_jax.data.build.image_tfds import Ade20k, CocoPanoptic
from stcl_jax.data.build.base import BadInputError
from stcl_jax.data.build.vspw_tfds import Vspw
from stcl_jax.data.datasets import ade20k, coco_panoptic, vspw
from stcl_jax.data.formats import ADE20K, COCO_PANOPTIC, LABELS, VSPW

# --dataset -> (builder class, (name, config, version), splits it has, the layout --data-root must hold)
DATASETS = {
    "vspw": (Vspw, VSPW, tuple(LABELS), "the extracted VSPW_480p folder (data/, train.txt, val.txt, test.txt)"),
    "ade20k": (Ade20k, ADE20K, tuple(ade20k.SPLITS),
               "ADEChallengeData2016 (images/ and annotations/, each with training/ and validation/)"),
    "coco-panoptic": (CocoPanoptic, COCO_PANOPTIC, coco_panoptic.SPLITS,
                      "a folder with annotations/panoptic_{train,val}2017.json, the panoptic PNG folders and "
                      "{train,val}2017/"),
}


def build_dataset(data_root: str, output_dir: str, splits: Sequence[str] = ("train", "val"), *, workers: int = 0,
                  skip_bad: bool = False, extra_frames: str | None = None, progress: bool = True,
                  dataset: str = "vspw") -> dict:
    """Builds the ArrayRecord dataset of `splits` from the extracted `dataset` folder `data_root` into
    `output_dir` (dataset: "vspw", "ade20k" or "coco-panoptic").

    Returns the report (also written to `output_dir/build_report.json` and the version folder): per split the
    videos/frames (images) written and the pixels per raw mask value, and the skipped files with reasons. Raises
    BadInputError naming the file on bad input unless `skip_bad`. Rerunning after a completed build does nothing
    (ValueError if it lacks one of `splits`); after an interrupted one it builds from scratch."""
    dataset = dataset.replace("_", "-")
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r}: expected one of {sorted(DATASETS)}")
    builder_cls, (name, config, version), known, layout = DATASETS[dataset]
    unknown = [s for s in splits if s not in known]
    if unknown or not splits:
        raise ValueError(f"splits {list(splits)}: each must be one of {list(known)} for {dataset}")
    if extra_frames and dataset != "vspw":
        raise ValueError("--extra-frames is for VSPW builds only")
    if not os.path.isdir(data_root):
        raise FileNotFoundError(f"--data-root {data_root} not found: pass {layout}")
    if dataset == "vspw" and not os.path.isdir(os.path.join(data_root, "data")):
        raise FileNotFoundError(f"--data-root {data_root} has no data/ folder: pass the extracted VSPW_480p folder")
    _check_layout(dataset, data_root, splits)
    if dataset == "vspw":
        _check_disjoint_splits(data_root)
    final = os.path.join(output_dir, name, config, version)
    if os.path.exists(os.path.join(final, "dataset_info.json")):
        _check_has_splits(final, splits)
        print(f"[build] {final} is already complete; delete it to rebuild")
        return _read_report(final) or _read_report(output_dir)
    _remove_stale_incomplete(os.path.join(output_dir, name, config))
    extra = {"extra_frames": extra_frames} if dataset == "vspw" else {}
    builder = builder_cls(data_dir=output_dir, config=config, file_format="array_record", splits=splits,
                          workers=workers, skip_bad=skip_bad, progress=progress, **extra)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_root))
    report = {"dataset": name, "data_root": os.path.abspath(data_root), "dataset_dir": os.path.abspath(final),
              "splits": builder.counts, "skipped": [{"path": b.path, "reason": b.reason} for b in builder.skipped],
              "pixels": {s: p.tolist() for s, p in builder.pixels.items()}}
    for folder in (output_dir, final):
        with open(os.path.join(folder, "build_report.json"), "w") as f:
            json.dump(report, f, indent=1)
    return report


def _check_layout(dataset: str, data_root: str, splits: Sequence[str]) -> None:
    """Fails early, saying which layout was expected, when `data_root` is not a `dataset` folder."""
    if dataset == "ade20k":
        root = ade20k.resolve_root(data_root)
        for split in splits:
            for folder in (ade20k.image_dir(root, split), ade20k.annotation_dir(root, split)):
                if not os.path.isdir(folder):
                    raise FileNotFoundError(f"ADE20K folder {folder} not found: expected {DATASETS[dataset][3]}")
    elif dataset == "coco-panoptic":
        for split in splits:
            coco_panoptic.find_layout(data_root, split)


def _check_disjoint_splits(data_root: str) -> None:
    """Refuses a VSPW folder whose split files share a video (training on validation data)."""
    listed = {s: vspw.read_split(data_root, s) for s in vspw.SPLITS if os.path.isfile(vspw.split_file(data_root, s))}
    seen: dict[str, str] = {}
    for split, videos in listed.items():
        for video in videos:
            if video in seen:
                raise BadInputError(f"video {video!r} is listed in both {vspw.split_file(data_root, seen[video])} "
                                    f"and {vspw.split_file(data_root, split)}: a video belongs to one split")
            seen[video] = split


def _check_has_splits(final: str, splits: Sequence[str]) -> None:
    """A complete build is never changed: asking it for a split it lacks is an error saying how to get one."""
    with open(os.path.join(final, "dataset_info.json")) as f:
        built = [s["name"] for s in json.load(f).get("splits", [])]
    missing = [s for s in splits if s not in built]
    if missing:
        raise ValueError(f"the complete build {final} has splits {built}, not {missing}: a build is written once, "
                         f"so build every split together into a new --output (--splits "
                         f"{','.join(dict.fromkeys([*built, *splits]))}), or delete {final} first")


def _remove_stale_incomplete(parent: str) -> None:
    """Deletes the `incomplete.*` folders that interrupted builds left in `parent` (tfds never reuses them)."""
    if not os.path.isdir(parent):
        return
    for d in sorted(os.listdir(parent)):
        path = os.path.join(parent, d)
        if d.startswith("incomplete.") and os.path.isdir(path):
            print(f"[build] removing {path}, left by an interrupted build")
            shutil.rmtree(path)


def _read_report(output_dir: str) -> dict:
    path = os.path.join(output_dir, "build_report.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}

