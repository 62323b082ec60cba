"""UperNet + CSwin-L (ImageNet-22K weights, fine-tuned at 384) with the paper's Transformer recipe on VSPW:
table 1's "CSwin-L / UperNet" row (55.30 mIoU) when trained without STCL (configs/paper.py:table1_cswin_l).

    python -m stcl_jax.convert --from cswin-official --input cswin_large_384.pth --output ckpt/cswin_l_22k_384
    python -m stcl_jax.train --config configs/cswin_l.py --workdir workdirs/cswin_l \\
        --config.data.dir=data/vspw --config.init_from=ckpt/cswin_l_22k_384

(`cswin_large_384.pth` is the official release's ImageNet-22K model fine-tuned at 384; `cswin_large_22k_224.pth`,
the 22K model itself, converts the same way.) Recipe: the Swin one of stcl_jax/configs/base.py (AdamW, lr 7e-5, 1,500
warmup iterations, drop path 0.3, bfloat16), as the paper trains both Transformer encoders. Stripe widths are the
official segmentation configs' (1, 2, 7, 7) (the 384 classifier used (1, 2, 12, 12); no weight depends on them:
`--config.model.cswin.split_size=(1,2,12,12)`). `:runlocal` is a tiny CSWin (same layout) that trains a few
steps on one CPU on generated synthetic data.
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)


def get_config(arg=None):
    c = recipes.cswin_l()
    base.synthetic_runlocal(c, arg)
    return base.finish(c, arg)
