"""UperNet + Swin-B (ImageNet-22K pretrained, window 7) with the STCL recipe on VSPW.

`--config configs/swin_b.py` is the paper's recipe (configs/common.py); `--config configs/swin_b.py:runlocal`
is a tiny model that trains a few steps on one CPU.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (configs/ is not a package: config_flags loads this file by path)
from sweeps import get_sweep  # noqa: E402,F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    c = common.base_config()
    c.model = common.model("base", window_size=7)
    return common.finish(c, arg)
