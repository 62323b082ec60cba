"""UperNet + ResNet-50 (mmseg `ResNetV1c`, ImageNet-1K weights) with the paper's CNN recipe on VSPW: table 1's
"ResNet-50 / UperNet" row (34.30 mIoU) when trained without STCL (configs/paper.py:table1_resnet50).

    python -m stcl_jax.convert --from timm-resnet --input resnet50c_in1k.pth --output ckpt/resnet50_in1k
    python -m stcl_jax.train --config configs/resnet50.py --workdir workdirs/resnet50 \\
        --config.data.dir=data/vspw --config.init_from=ckpt/resnet50_in1k

(`--from mmseg-resnet` reads mmseg's `open-mmlab://resnet50_v1c` file.) Recipe: configs/common.py `cnn_config`.
`:runlocal` is a tiny ResNet (same layout) that trains a few steps on one CPU on generated synthetic data.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (configs/ is not a package: config_flags loads this file by path)
from sweeps import get_sweep  # noqa: E402,F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    c = common.cnn_config("resnet50")
    common.synthetic_runlocal(c, arg)
    return common.finish(c, arg)
