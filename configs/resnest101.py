"""UperNet + ResNeSt-101 (mmseg `ResNeSt`, ImageNet-1K weights) with the paper's CNN recipe on VSPW: table 1's
"ResNest-101 / UperNet" row (37.58 mIoU) when trained without STCL (configs/paper.py:table1_resnest101).

    python -m stcl_jax.convert --from timm-resnet --input resnest101e_in1k.pth --output ckpt/resnest101_in1k
    python -m stcl_jax.train --config configs/resnest101.py --workdir workdirs/resnest101 \\
        --config.data.dir=data/vspw --config.init_from=ckpt/resnest101_in1k

(`--from mmseg-resnet` reads mmseg's `resnest101` ImageNet file.) Recipe: configs/common.py `cnn_config`.
`:runlocal` is a tiny ResNeSt (same layout) that trains a few steps on one CPU on generated synthetic data.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (configs/ is not a package: config_flags loads this file by path)
from sweeps import get_sweep  # noqa: E402,F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    c = common.cnn_config("resnest101")
    common.synthetic_runlocal(c, arg)
    return common.finish(c, arg)
