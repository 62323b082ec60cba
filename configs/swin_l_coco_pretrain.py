"""Stage 1 of the paper's best row (table 2, "Swin-L + COCO-pre", 58.03 mIoU): UperNet + Swin-L pre-trained on
COCO panoptic turned into 133-class semantic labels, with its own 133-class classifier.

    python -m stcl_jax.data.build --dataset coco-panoptic --data-root COCO --output data/coco
    python -m stcl_jax.train --config configs/swin_l_coco_pretrain.py --workdir workdirs/coco_pretrain \\
        --config.data.dir=data/coco --config.init_from=SWIN_L_IMAGENET22K_EXPORT
    # stage 2: the VSPW recipe from this checkpoint; the 133-class classifiers (conv_seg) are re-initialised
    python -m stcl_jax.train --config configs/swin_l.py --workdir workdirs/swin_l_coco_pre \\
        --config.data.dir=data/vspw --config.init_from=workdirs/coco_pretrain

Images are single-frame samples (`num_frames = 1`): CE on each image and a spatial-only STCL (anchors and
contrast from the one image). The paper does not give the pre-training schedule; this uses mmseg's UperNet-Swin
COCO-Stuff164k one (80K iterations, batch 16, 512x512 crops of images rescaled to fit 2048x512 x 0.5-2.0) with the
VSPW recipe's optimizer. Validation is mIoU over the 133 classes of COCO val2017.
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    return base.finish(recipes.coco_pretrain(), arg)
