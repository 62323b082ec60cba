"""The names of the builds: what `stcl_jax.data.build` writes and `stcl_jax.data.records` finds (constants only).

A build of dataset (name, config, version) lives in `<output_dir>/<name>/<config>/<version>/` (the tfds layout).
"""

from __future__ import annotations

import os

# (tfds name, config, version) of each dataset's build
VSPW = ("vspw", "480p", "1.0.0")
ADE20K = ("ade20k", "scene_parsing", "1.0.0")
COCO_PANOPTIC = ("coco_panoptic", "semantic", "1.0.0")
# (name, config) of every dataset stcl_jax.data.build writes
BUILDS = (VSPW[:2], ADE20K[:2], COCO_PANOPTIC[:2])

# VSPW splits -> which frames need a mask: "extra" holds the videos of --extra-frames (pseudo labels or none)
EXTRA = "extra"
LABELS = {"train": "required", "val": "required", "test": "none", EXTRA: "optional"}


def dataset_dir(output_dir: str) -> str:
    """The tfds folder that a VSPW `build_dataset(..., output_dir)` fills."""
    return os.path.join(output_dir, *VSPW)
