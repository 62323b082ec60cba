"""The paper's COCO pre-training path in miniature, on a 2-core CPU: the demo model (configs/demo.py) pre-trained
on a generated synthetic COCO-panoptic-layout image set with its own 133-class classifier, then fine-tuned on the
synthetic VSPW from that checkpoint (the classifiers re-initialised, everything else loaded):

    python -m stcl_jax.train --config configs/demo_coco_pretrain.py --workdir workdirs/demo_coco_pretrain
    python -m stcl_jax.train --config configs/demo.py --workdir workdirs/demo_from_coco \\
        --config.init_from=workdirs/demo_coco_pretrain

With `data.dir` empty the image set (`synthetic.*`) is generated and built (`--dataset coco-panoptic`) into
`workdir/data` first. Images are single-frame samples (num_frames 1: CE and a spatial-only STCL). `:runlocal` is
a 4-step smoke variant of both steps.
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    return base.finish(recipes.demo_coco_pretrain(arg == "runlocal"), arg)
