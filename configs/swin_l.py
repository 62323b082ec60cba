"""UperNet + Swin-L (ImageNet-22K pretrained, window 12) with the STCL recipe on VSPW.

`--config configs/swin_l.py` is the paper's recipe (stcl_jax/configs/base.py); `--config configs/swin_l.py:runlocal`
is a tiny model that trains a few steps on one CPU.
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    return base.finish(recipes.swin("large", 12), arg)
