"""UperNet + ResNet-50 (mmseg `ResNetV1c`, ImageNet-1K weights) with the paper's CNN recipe on VSPW: table 1's
"ResNet-50 / UperNet" row (34.30 mIoU) when trained without STCL (configs/paper.py:table1_resnet50).

    python -m stcl_jax.convert --from timm-resnet --input resnet50c_in1k.pth --output ckpt/resnet50_in1k
    python -m stcl_jax.train --config configs/resnet50.py --workdir workdirs/resnet50 \\
        --config.data.dir=data/vspw --config.init_from=ckpt/resnet50_in1k

(`--from mmseg-resnet` reads mmseg's `open-mmlab://resnet50_v1c` file.) Recipe: stcl_jax/configs/recipes.py `cnn`.
`:runlocal` is a tiny ResNet (same layout) that trains a few steps on one CPU on generated synthetic data.
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    c = recipes.cnn("resnet50")
    base.synthetic_runlocal(c, arg)
    return base.finish(c, arg)
