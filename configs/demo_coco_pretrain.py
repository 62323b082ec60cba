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

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import demo  # noqa: E402
from sweeps import get_sweep  # noqa: E402,F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    c = demo.demo_recipe(common.base_config())
    c.synthetic = ml_collections.ConfigDict(dict(layout="coco-panoptic", train=160, val=24, size=(64, 96), seed=1))
    c.total_steps = 200
    c.global_batch_size = 8
    c.data.num_frames = 1
    c.optim.warmup_steps = 20
    c.model = demo.demo_model(num_classes=133)
    if arg == "runlocal":
        c.synthetic.train, c.synthetic.val = 8, 4
    return common.finish(c, arg)
