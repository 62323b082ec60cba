"""`python -m stcl_jax.data.build`: the flags of `build_dataset` (see `stcl_jax.data.build.build` for the format).

    python -m stcl_jax.data.build [--dataset vspw|ade20k|coco-panoptic] --data-root PATH --output DIR
                                  [--splits train,val] [--workers K] [--skip-bad] [--extra-frames DIR]
"""

from __future__ import annotations

import argparse

from stcl_jax.data.build.build import DATASETS, build_dataset
from stcl_jax.data.formats import EXTRA, LABELS


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m stcl_jax.data.build", description="Build VSPW, ADE20K or COCO "
                                "panoptic ArrayRecord shards (tensorflow-datasets, no TensorFlow).")
    p.add_argument("--dataset", default="vspw", choices=sorted(DATASETS), help="which dataset --data-root holds")
    p.add_argument("--data-root", required=True, help="vspw: the extracted VSPW_480p folder (data/, train.txt, ...); "
                   "ade20k: ADEChallengeData2016; coco-panoptic: the folder with annotations/ and train2017/ ...")
    p.add_argument("--output", required=True, help="output folder (tfds data_dir)")
    p.add_argument("--splits", default="train,val", help=f"comma-separated, of {','.join(LABELS)} (VSPW) or "
                   "train,val (ADE20K, COCO)")
    p.add_argument("--workers", type=int, default=0, help="processes reading and checking files (0 = in-process)")
    p.add_argument("--skip-bad", action="store_true", help="leave bad frames out and list them in the report")
    p.add_argument("--extra-frames", default=None, help="VSPW-layout folder of extra (unlabelled or "
                   "pseudo-labelled) videos, built as split 'extra' (added to --splits automatically)")
    a = p.parse_args(argv)
    splits = [s for s in a.splits.split(",") if s]
    if a.extra_frames and EXTRA not in splits:
        splits.append(EXTRA)
    report = build_dataset(a.data_root, a.output, splits, workers=a.workers, skip_bad=a.skip_bad,
                           extra_frames=a.extra_frames, dataset=a.dataset)
    for split, c in report.get("splits", {}).items():
        print(f"[build] {split}: " + ", ".join(f"{n} {what}" for what, n in c.items()))
    skipped = report.get("skipped", [])
    if skipped:
        print(f"[build] skipped {len(skipped)} bad inputs (listed in {a.output}/build_report.json):")
        for b in skipped[:20]:
            print(f"  {b['path']}: {b['reason']}")

