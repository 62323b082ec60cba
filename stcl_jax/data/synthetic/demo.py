"""The dataset a config without data trains on: `config.synthetic` generated and built into the workdir.

`ensure_demo_dataset(synthetic, data_root, splits)` writes the raw layout to `data_root/raw` (VSPW videos or
COCO-panoptic images, `stcl_jax.configs.base.synthetic_videos / synthetic_images`) and builds it into
`data_root/built`, once: a `.complete` marker makes a rerun (a resume) skip both. Process 0 writes; with several
processes every one waits for it.
"""

from __future__ import annotations

import logging
import os

import jax

from stcl_jax.data.build import build_dataset
from stcl_jax.data.synthetic.images import write_synthetic_coco_panoptic
from stcl_jax.data.synthetic.vspw import write_synthetic_vspw

log = logging.getLogger("stcl_jax.data")
LAYOUTS = ("vspw", "coco-panoptic")


def built_dir(data_root: str) -> str:
    """Where `ensure_demo_dataset` builds the dataset (what `config.data.dir` becomes)."""
    return os.path.join(data_root, "built")


def ensure_demo_dataset(synthetic, data_root: str, splits) -> str:
    """Generates and builds `synthetic` under `data_root` unless done before; returns the build directory."""
    if synthetic.layout not in LAYOUTS:
        raise ValueError(f"config.synthetic.layout={synthetic.layout!r}: expected one of {LAYOUTS}")
    built = built_dir(data_root)
    done = os.path.join(built, ".complete")
    if jax.process_index() == 0 and not os.path.exists(done):
        _write(synthetic, os.path.join(data_root, "raw"), built, tuple(splits))
        open(done, "w").close()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("stcl_jax synthetic data ready")
    return built


def _write(s, raw: str, built: str, splits) -> None:
    if s.layout == "vspw":
        log.info("generating the synthetic VSPW dataset (%d videos x %d frames) in %s", s.videos, s.frames, raw)
        write_synthetic_vspw(raw, s.videos, s.frames, size=tuple(s.size), seed=s.seed)
    else:
        log.info("generating the synthetic COCO panoptic images (%d train, %d val) in %s", s.train, s.val, raw)
        write_synthetic_coco_panoptic(raw, images={"train": s.train, "val": s.val}, size=tuple(s.size), seed=s.seed)
    build_dataset(raw, built, splits=splits, dataset=s.layout)
