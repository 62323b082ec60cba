"""The README's main command: a small Swin + UperNet + STCL trained on a generated synthetic VSPW-layout dataset.

    python -m stcl_jax.train --config configs/demo.py --workdir workdirs/demo

With `data.dir` empty the dataset (`synthetic.*`: videos x frames of size h x w) is generated and built into
`workdir/data` first. The model trains from scratch (no pretrained weights), so it uses a larger learning rate
than the paper's fine-tuning recipe; everything else (losses, schedule shape, augmentation, clips) is the recipe.
Sized for a 2-core CPU: a few minutes, validation mIoU printed at the end. `:runlocal` is a 4-step smoke variant.
`configs/demo_coco_pretrain.py` pre-trains the same model on synthetic COCO-panoptic images; pass its workdir as
`--config.init_from` to fine-tune from it (the paper's COCO pre-training path, in miniature).
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from sweeps import get_sweep  # noqa: E402,F401  (named sweeps for python -m stcl_jax.sweep)


def demo_model(num_classes: int = 124):
    """A small Swin + UperNet that trains in minutes on a CPU (shared with demo_coco_pretrain.py)."""
    m = common.model("tiny", window_size=4, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                     decoder_channels=64, aux_channels=32, num_classes=num_classes)
    m.swin.drop_path_rate = 0.1
    m.projection.dim = 32
    m.dtype = "float32"                # bf16 matmuls are slow on CPU
    return m


def demo_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The demo's CPU-sized training settings on a base config (shared with demo_coco_pretrain.py)."""
    c.data.base_size = (64, 96)
    c.data.crop_size = (64, 96)
    # Ratios >= 1 never pad the 64x96 crop: from scratch (zero biases) a zero-padded region gives all-zero
    # tokens, whose LayerNorm (variance 0) multiplies the gradient by 1/sqrt(eps) per norm; measured grad norms
    # reached 1e10 on padded batches at step 0 (pretrained weights do not have this problem).
    c.data.scale_range = (1.0, 1.75)
    c.data.worker_count = 0
    c.optim.learning_rate = 1e-3
    c.log_every_steps = 25
    c.checkpoint_every_steps = 100
    c.eval_every_steps = 0
    c.eval.mode = "whole"
    c.eval.crop = (64, 96)
    c.eval.stride = (64, 96)
    return c


def get_config(arg=None):
    c = demo_recipe(common.base_config())
    c.synthetic = ml_collections.ConfigDict(dict(videos=24, frames=12, size=(64, 96), seed=0))
    c.total_steps = 300
    c.global_batch_size = 4
    c.optim.warmup_steps = 30
    c.model = demo_model()
    if arg == "runlocal":
        c.synthetic.videos, c.synthetic.frames = 6, 4
    return common.finish(c, arg)
