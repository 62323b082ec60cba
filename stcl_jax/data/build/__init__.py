"""Builds the datasets into ArrayRecord shards: `python -m stcl_jax.data.build` (cli.py), `build_dataset`.

  build.py                       build_dataset, its checks of the input folder and the output; the record format
  base.py                        what the builders share: record features, RecordBuilder, worker pool, errors
  vspw_tfds.py, image_tfds.py    the tensorflow-datasets builders (VSPW; ADE20K and COCO panoptic)
  checks.py                      reading and checking one frame, mask or image file
  vspw_scan.py, image_scan.py    reading and checking one video / one image (the work unit of --workers)
"""

from stcl_jax.data.build.build import build_dataset
from stcl_jax.data.build.base import BadInputError

__all__ = ["BadInputError", "build_dataset"]
