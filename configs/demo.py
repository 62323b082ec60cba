"""The README's main command: a small Swin + UperNet + STCL trained on a generated synthetic VSPW-layout dataset.

    python -m stcl_jax.train --config configs/demo.py --workdir workdirs/demo

With `data.dir` empty the dataset (`synthetic.*`: videos x frames of size h x w) is generated and built into
`workdir/data` first. The model trains from scratch (no pretrained weights), so it uses a larger learning rate
than the paper's fine-tuning recipe; everything else (losses, schedule shape, augmentation, clips) is the recipe.
Sized for a 2-core CPU: a few minutes, validation mIoU printed at the end. `:runlocal` is a 4-step smoke variant.
`configs/demo_coco_pretrain.py` pre-trains the same model on synthetic COCO-panoptic images; pass its workdir as
`--config.init_from` to fine-tune from it (the paper's COCO pre-training path, in miniature).
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    return base.finish(recipes.demo(arg == "runlocal"), arg)
