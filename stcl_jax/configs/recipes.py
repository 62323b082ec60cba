"""The recipes behind the repository's `configs/*.py` files, as functions returning unlocked ConfigDicts.

Each `configs/X.py` is `base.finish(recipes.something(), arg)` plus its docstring; the paper-table variants
(configs/paper.py) and the demos build on the same functions, so no config file imports another.
"""

from __future__ import annotations

import ml_collections

from stcl_jax.configs import base

COCO_PANOPTIC_CLASSES = 133


def swin(size: str, window_size: int, **model_kwargs) -> ml_collections.ConfigDict:
    """UperNet + Swin-{size} on VSPW with the paper's recipe (configs/swin_{t,s,b,l}.py)."""
    c = base.base_config()
    c.model = base.model(size, window_size=window_size, **model_kwargs)
    return c


def cswin_l() -> ml_collections.ConfigDict:
    """UperNet + CSwin-L with the paper's Transformer recipe, the Swin one (configs/cswin_l.py)."""
    c = base.base_config()
    c.model = base.model("cswin_l")
    return c


def cnn(backbone: str) -> ml_collections.ConfigDict:
    """UperNet + a CNN encoder ("resnet50" | "resnest101") with the paper's CNN recipe (Sec. 3.2).

    SGD, lr 0.01, momentum 0.9, weight decay 1e-4 on every parameter (mmseg's CNN configs have no paramwise
    exemptions), no warmup, poly decay with mmseg's `schedule_20k` (power 0.9, min_lr 1e-4); ImageNet-1K weights
    via `config.init_from` (python -m stcl_jax.convert --from timm-resnet|mmseg-resnet ...). Everything else
    (data, 20K iterations, batch 16, losses) is the shared recipe of `base_config`.
    """
    c = base.base_config()
    c.optim.name = "sgd"
    c.optim.learning_rate = 0.01
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.no_decay_patterns = ()
    c.optim.decay_exempt = "mmseg"
    c.optim.warmup_steps = 0
    c.optim.poly_power = 0.9
    c.optim.min_lr = 1e-4
    c.model = base.model(backbone)
    return c


def joint(name: str, label_map: str, ratio: float = 0.3) -> ml_collections.ConfigDict:
    """Swin-L on VSPW with the image build `config.data.mixture.<name>.dir` mixed into `ratio` of the clips, its
    classes mapped onto VSPW's by `label_map` (configs/swin_l_joint_*.py; the paper gives no ratio)."""
    c = swin("large", 12)
    c.data.mixture[name] = base.mixture_source(ratio=ratio, label_map=label_map)
    return c


def coco_pretrain() -> ml_collections.ConfigDict:
    """Swin-L pre-trained on COCO panoptic as 133-class semantic labels (configs/swin_l_coco_pretrain.py):
    mmseg's UperNet-Swin COCO-Stuff164k schedule with the VSPW recipe's optimizer."""
    c = swin("large", 12, num_classes=COCO_PANOPTIC_CLASSES)
    c.total_steps = 80_000
    c.data.num_frames = 1
    c.data.base_size = (512, 2048)
    c.data.crop_size = (512, 512)
    c.eval_every_steps = 8_000
    c.eval.crop = (512, 512)
    c.eval.stride = (341, 341)
    c.checkpoint_every_steps = 2_000
    return c


# ------------------------------------------------------------------------------------------------------ demos --
def demo_model(num_classes: int = 124):
    """A small Swin + UperNet that trains in minutes on a CPU."""
    m = base.model("tiny", window_size=4, embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8),
                   decoder_channels=64, aux_channels=32, num_classes=num_classes)
    m.swin.drop_path_rate = 0.1
    m.projection.dim = 32
    m.dtype = "float32"                # bf16 matmuls are slow on CPU
    return m


def demo_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The demos' CPU-sized training settings on a base config."""
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


def demo(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The README's main job (configs/demo.py): the demo model on a generated synthetic VSPW."""
    c = demo_recipe(base.base_config())
    c.synthetic = base.synthetic_videos(videos=24, frames=12)
    c.total_steps = 300
    c.global_batch_size = 4
    c.optim.warmup_steps = 30
    c.model = demo_model()
    if runlocal:
        c.synthetic.videos, c.synthetic.frames = 6, 4
    return c


def demo_coco_pretrain(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The demo model pre-trained on synthetic COCO-panoptic images (configs/demo_coco_pretrain.py)."""
    c = demo_recipe(base.base_config())
    c.synthetic = base.synthetic_images(train=160, val=24)
    c.total_steps = 200
    c.global_batch_size = 8
    c.data.num_frames = 1
    c.optim.warmup_steps = 20
    c.model = demo_model(num_classes=COCO_PANOPTIC_CLASSES)
    if runlocal:
        c.synthetic.train, c.synthetic.val = 8, 4
    return c


def demo_resnet50(runlocal: bool = False) -> ml_collections.ConfigDict:
    """The demo with a narrow ResNet-50 encoder (configs/demo_resnet50.py)."""
    c = demo(runlocal)
    c.model.backbone = "resnet50"
    c.model.cnn.width, c.model.cnn.stem_width = 16, 16
    return c
