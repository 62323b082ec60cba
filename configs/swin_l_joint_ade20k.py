"""UperNet + Swin-L trained on VSPW jointly with ADE20K (paper table 2, "Swin-L + ADE20K", 56.70 mIoU): the VSPW recipe
(configs/swin_l.py) with ADE20K images mixed into the clips, their classes mapped onto VSPW's 124 by
`stcl_jax/data/label_maps/ade20k_to_vspw.txt` (unmapped classes are ignored; edit a copy to change it).

    python -m stcl_jax.data.build --dataset ade20k --data-root ADEChallengeData2016 --output data/ade20k
    python -m stcl_jax.train --config configs/swin_l_joint_ade20k.py --workdir workdirs/swin_l_joint_ade20k \\
        --config.data.dir=data/vspw --config.data.mixture.ade20k.dir=data/ade20k

Each ADE20K image is a single-frame sample: it fills the clip with ignore-labelled repeats, so CE counts it once and
its STCL term is spatial (anchors and contrast from the one image); `single_frame_stcl="skip"` drops it from STCL
instead. The paper does not give the mixing ratio; 0.3 of the clips is an assumption (sweep it with
`--config.data.mixture.ade20k.ratio`). Validation stays on VSPW val."""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    return base.finish(recipes.joint("ade20k", "ade20k_to_vspw"), arg)
