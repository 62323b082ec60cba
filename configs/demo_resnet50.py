"""The CPU demo (configs/demo.py: generated synthetic VSPW, same data, heads, losses and schedule) with a
ResNet-50 encoder instead of the small Swin: mmseg's ResNetV1c layout (deep stem, bottlenecks, depths 3-4-6-3,
strides 4/8/16/32) at a quarter of its width (stage-1 bottleneck width 16, stem 16-16-32), so that it trains in
minutes on a 2-core CPU. From scratch, with demo.py's AdamW (the paper's SGD recipe is for ImageNet-initialised
encoders: configs/resnet50.py).

    python -m stcl_jax.train --config configs/demo_resnet50.py --workdir workdirs/demo_resnet50

`--config configs/demo.py --config.model.backbone=resnet50` trains the full-width ResNet-50 on the same data
(26 M parameters: far slower on a CPU).
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    return base.finish(recipes.demo_resnet50(arg == "runlocal"), arg)
