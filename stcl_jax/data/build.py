"""Builds VSPW into ArrayRecord shards with tensorflow-datasets (no TensorFlow needed).

    python -m stcl_jax.data.build --data-root VSPW_480p --output DIR [--splits train,val] [--workers K]
                                  [--skip-bad] [--extra-frames DIR]

Output: `DIR/vspw/480p/1.0.0/` (tfds layout: `vspw-<split>.array_record-XXXXX-of-YYYYY`, dataset_info.json,
features.json) and `DIR/build_report.json`. tfds writes into a temporary `incomplete.*` folder and renames it
only when every split is done, so an interrupted build never leaves shards that look complete: just rerun it.

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

Bad input (corrupt JPEG/PNG, mask size differing from its frame, label value neither a class id nor void, frame
without mask in a labelled split, listed video missing) stops the build with an error naming the file; with
--skip-bad the frame (or video) is left out and listed in the report instead.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import tensorflow_datasets as tfds

from stcl_jax.data.vspw_tfds import CONFIG, EXTRA, LABELS, BadInputError, Vspw, dataset_dir  # noqa: F401

def build_dataset(data_root: str, output_dir: str, splits: Sequence[str] = ("train", "val"), *, workers: int = 0,
                  skip_bad: bool = False, extra_frames: str | None = None, progress: bool = True) -> dict:
    """Builds the ArrayRecord dataset of `splits` from the extracted VSPW folder `data_root` into `output_dir`.

    Returns the report (also written to `output_dir/build_report.json`): per split videos/frames written and the
    skipped files with reasons. Raises BadInputError naming the file on bad input unless `skip_bad`.
    Rerunning after a completed build does nothing; after an interrupted one it builds from scratch."""
    unknown = [s for s in splits if s not in LABELS]
    if unknown or not splits:
        raise ValueError(f"splits {list(splits)}: each must be one of {sorted(LABELS)}")
    if not os.path.isdir(os.path.join(data_root, "data")):
        raise FileNotFoundError(f"--data-root {data_root} has no data/ folder: pass the extracted VSPW_480p folder")
    final = dataset_dir(output_dir)
    if os.path.exists(os.path.join(final, "dataset_info.json")):
        print(f"[build] {final} is already complete; delete it to rebuild")
        return _read_report(output_dir)
    builder = Vspw(data_dir=output_dir, config=CONFIG, file_format="array_record", splits=splits, workers=workers,
                   skip_bad=skip_bad, extra_frames=extra_frames, progress=progress)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_root))
    report = {"data_root": os.path.abspath(data_root), "dataset_dir": os.path.abspath(final),
              "splits": builder.counts, "skipped": [{"path": b.path, "reason": b.reason} for b in builder.skipped]}
    with open(os.path.join(output_dir, "build_report.json"), "w") as f:
        json.dump(report, f, indent=1)
    return report


def _read_report(output_dir: str) -> dict:
    path = os.path.join(output_dir, "build_report.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def main(argv=None):
    p = argparse.ArgumentParser(description="Build VSPW ArrayRecord shards (tensorflow-datasets, no TensorFlow).")
    p.add_argument("--data-root", required=True, help="extracted VSPW_480p folder (data/, train.txt, ...)")
    p.add_argument("--output", required=True, help="output folder (tfds data_dir)")
    p.add_argument("--splits", default="train,val", help=f"comma-separated, of {','.join(LABELS)}")
    p.add_argument("--workers", type=int, default=0, help="processes reading and checking files (0 = in-process)")
    p.add_argument("--skip-bad", action="store_true", help="leave bad frames out and list them in the report")
    p.add_argument("--extra-frames", default=None, help="VSPW-layout folder of extra (unlabelled or "
                   "pseudo-labelled) videos, built as split 'extra' (added to --splits automatically)")
    a = p.parse_args(argv)
    splits = [s for s in a.splits.split(",") if s]
    if a.extra_frames and EXTRA not in splits:
        splits.append(EXTRA)
    report = build_dataset(a.data_root, a.output, splits, workers=a.workers, skip_bad=a.skip_bad,
                           extra_frames=a.extra_frames)
    for split, c in report.get("splits", {}).items():
        print(f"[build] {split}: {c['videos']} videos, {c['frames']} frames")
    skipped = report.get("skipped", [])
    if skipped:
        print(f"[build] skipped {len(skipped)} bad inputs (listed in {a.output}/build_report.json):")
        for b in skipped[:20]:
            print(f"  {b['path']}: {b['reason']}")


if __name__ == "__main__":
    main()
