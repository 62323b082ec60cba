"""UperNet + ResNeSt-101 (mmseg `ResNeSt`, ImageNet-1K weights) with the paper's CNN recipe on VSPW: table 1's
"ResNest-101 / UperNet" row (37.58 mIoU) when trained without STCL (configs/paper.py:table1_resnest101).

    python -m stcl_jax.convert --from timm-resnet --input resnest101e_in1k.pth --output ckpt/resnest101_in1k
    python -m stcl_jax.train --config configs/resnest101.py --workdir workdirs/resnest101 \\
        --config.data.dir=data/vspw --config.init_from=ckpt/resnest101_in1k

(`--from mmseg-resnet` reads mmseg's `resnest101` ImageNet file.) Recipe: stcl_jax/configs/recipes.py `cnn`.
`:runlocal` is a tiny ResNeSt (same layout) that trains a few steps on one CPU on generated synthetic data.
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    c = recipes.cnn("resnest101")
    base.synthetic_runlocal(c, arg)
    return base.finish(c, arg)
