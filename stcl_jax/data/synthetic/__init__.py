"""Small synthetic datasets in the real on-disk layouts, for the demo configs and the tests
(`python -m stcl_jax.data.synthetic [--layout vspw|ade20k|coco-panoptic]`).

  vspw.py     write_synthetic_vspw: videos in the VSPW_480p layout
  images.py   write_synthetic_ade20k, write_synthetic_coco_panoptic: images in the ADE20K / COCO panoptic layouts
  render.py   the looks both draw with (class colours and textures, scenes, object shapes)
  cli.py      the command's flags
"""

from stcl_jax.data.synthetic.images import write_synthetic_ade20k, write_synthetic_coco_panoptic
from stcl_jax.data.synthetic.vspw import write_synthetic_vspw

__all__ = ["write_synthetic_ade20k", "write_synthetic_coco_panoptic", "write_synthetic_vspw"]
