"""`python -m stcl_jax.data.synthetic`: writes a small synthetic dataset in a real layout.

    python -m stcl_jax.data.synthetic [--layout vspw] --output DIR [--videos N] [--frames F] [--size HxW] [--seed S]
    python -m stcl_jax.data.synthetic --layout {ade20k,coco-panoptic} --output DIR [--train N] [--val M]
                                      [--size HxW] [--seed S]

The second form replaces `python -m stcl_jax.data.synthetic_images` (same flags). --videos/--frames
are for the VSPW layout only, --train/--val for the image layouts only.
"""

from __future__ import annotations

import argparse

from stcl_jax.data.synthetic.images import write_synthetic_ade20k, write_synthetic_coco_panoptic
from stcl_jax.data.synthetic.vspw import write_synthetic_vspw

# flag -> (layouts it is for, default)
_COUNTS = {"videos": (("vspw",), 12), "frames": (("vspw",), 16),
           "train": (("ade20k", "coco-panoptic"), 24), "val": (("ade20k", "coco-panoptic"), 8)}


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be HxW, e.g. 480x853, got {text!r}") from None
    return h, w


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m stcl_jax.data.synthetic", description="Write a small synthetic "
                                "dataset in the VSPW_480p, ADE20K SceneParsing or COCO panoptic layout.")
    p.add_argument("--layout", default="vspw", choices=("vspw", "ade20k", "coco-panoptic"))
    p.add_argument("--output", required=True, help="folder to write (becomes a VSPW_480p-style root, "
                   "ADEChallengeData2016 or the COCO root)")
    p.add_argument("--videos", type=int, default=None, help="vspw: videos (default 12)")
    p.add_argument("--frames", type=int, default=None, help="vspw: frames per video (default 16)")
    p.add_argument("--train", type=int, default=None, help="ade20k, coco-panoptic: training images (default 24)")
    p.add_argument("--val", type=int, default=None, help="ade20k, coco-panoptic: validation images (default 8)")
    p.add_argument("--size", type=_parse_size, default=(128, 192), help="frame / image size HxW")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for flag, (layouts, default) in _COUNTS.items():
        if getattr(a, flag) is None:
            setattr(a, flag, default)
        elif a.layout not in layouts:
            p.error(f"--{flag} is for --layout {' or '.join(layouts)}, not {a.layout}")
    if a.layout == "vspw":
        splits = write_synthetic_vspw(a.output, a.videos, a.frames, a.size, a.seed)
        print(f"wrote {a.videos} videos x {a.frames} frames of {a.size[0]}x{a.size[1]} to {a.output}: "
              + ", ".join(f"{s} {len(v)}" for s, v in splits.items()))
        return
    write = write_synthetic_ade20k if a.layout == "ade20k" else write_synthetic_coco_panoptic
    write(a.output, {"train": a.train, "val": a.val}, a.size, a.seed)
    print(f"wrote {a.train} train + {a.val} val {a.layout} images of {a.size[0]}x{a.size[1]} to {a.output}")
