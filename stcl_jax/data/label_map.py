"""Checks a label mapping file (format: `stcl_jax.data.label_space`) and reports what it keeps:

    python -m stcl_jax.data.label_map --map ade20k_to_vspw --source ade20k [--pixels BUILD_DIR] [--split train]

Prints which VSPW class each source class maps onto and, with --pixels, the share of a build's labelled pixels the
map keeps (from its build_report.json). A command only: nothing imports this module.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from stcl_jax import cli_errors
from stcl_jax.data import records
from stcl_jax.data.datasets import ade20k, coco_panoptic, vspw
from stcl_jax.data.label_space import IGNORE, kept_pixels, read_label_map, resolve_map_path


def _source_names(source: str) -> list[str]:
    if source == "ade20k":
        return list(ade20k.CLASS_NAMES)
    if source in ("coco_panoptic", "coco-panoptic"):
        return [name for _, name, _ in coco_panoptic.CATEGORIES]
    return records.dataset_class_names(source)


def _pixel_counts(build_dir: str, split: str, num_classes: int) -> np.ndarray:
    """Per-class labelled pixel counts of a build, from its build_report.json (raw value k -> class k - 1)."""
    path = os.path.join(build_dir, "build_report.json")
    with open(path) as f:
        report = json.load(f)
    try:
        raw = np.asarray(report["pixels"][split], np.float64)
    except KeyError:
        raise KeyError(f"{path} has no pixel counts for split {split!r} (rebuild with this version)") from None
    return raw[1:num_classes + 1]


def main(argv=None):
    p = argparse.ArgumentParser(description="Check a label mapping file and report what it keeps.")
    p.add_argument("--map", required=True, help="shipped map name (ade20k_to_vspw, coco_panoptic_to_vspw) or file")
    p.add_argument("--source", required=True, help="ade20k, coco_panoptic, or a build directory")
    p.add_argument("--pixels", default="", help="a build directory whose build_report.json pixel counts to use")
    p.add_argument("--split", default="train")
    a = p.parse_args(argv)
    names = _source_names(a.source)
    lut = read_label_map(a.map, names, vspw.CLASS_NAMES)
    print(f"{resolve_map_path(a.map)}: {int((lut[:len(names)] != IGNORE).sum())} of {len(names)} source classes "
          f"map onto {len(set(lut[:len(names)].tolist()) - {IGNORE})} of the {vspw.NUM_CLASSES} VSPW classes")
    for i, n in enumerate(names):
        print(f"  {n:32s} -> {vspw.CLASS_NAMES[lut[i]] if lut[i] != IGNORE else '(ignore)'}")
    if a.pixels:
        r = kept_pixels(lut, _pixel_counts(a.pixels, a.split, len(names)))
        print(f"labelled pixels kept in {a.pixels} [{a.split}]: {100 * r['share_kept']:.1f}% "
              f"({r['pixels_kept']:.0f} of {r['pixels']:.0f})")


if __name__ == "__main__":
    cli_errors.run(main)
