"""Every training recipe of the paper's tables 1-4 as a named variant: `--config configs/paper.py:VARIANT`.

    python -m stcl_jax.train --config configs/paper.py:table3_stcl_512_t007 --workdir W \\
        --config.data.dir=data/vspw --config.init_from=workdirs/table2_coco_pretrain
    python -m stcl_jax.train --config configs/paper.py:table1_resnet50,runlocal --workdir /tmp/w   # tiny, CPU

docs/paper_rows.md maps every row to its commands (weights, stage order, teacher, ensemble) and the paper's
numbers. Tables 1 and 2 are the baselines before STCL (`loss.stcl_weight = 0`); STCL (weight 0.2) first appears
in table 3, whose rows fine-tune the table-2 COCO pre-training. Rows that share a recipe share a variant
(`table2_swin_l` is `table1_swin_l`, `table3_baseline` is `table2_coco_pre`). Append ",runlocal" for the tiny
variant (a micro model of the same encoder; VSPW-only rows generate synthetic data when no data.dir is given).
Without a variant (`configs/paper.py`, `configs/paper.py:runlocal`) it is `table3_stcl_512_t007`, the recipe of
the paper's best single model before pseudo-labels. Table 1's CSwin-L row (`table1_cswin_l`) is the Swin-L
recipe on the CSwin-L encoder (configs/cswin_l.py).
"""

from stcl_jax.configs import base, recipes
from stcl_jax.configs.sweeps import get_sweep  # noqa: F401  (named sweeps for python -m stcl_jax.sweep)

NO_STCL, STCL = 0.0, 0.2
PSEUDO_RATIO = 0.5  # the paper "combines" pseudo-labelled and training data without a ratio; README's default


def _swin_l():
    return recipes.swin("large", 12)


def _stcl(weight, dim=512, temperature=0.07, recipe=_swin_l):
    def build():
        c = recipe()
        c.loss.stcl_weight, c.loss.temperature, c.model.projection.dim = weight, temperature, dim
        return c
    return build


def _pseudo():
    c = _stcl(STCL)()
    c.data.pseudo_ratio = PSEUDO_RATIO
    return c


VARIANTS = {
    # table 1: encoders, no STCL (Swin-L, CSwin-L: AdamW recipe; CNNs: SGD recipe, stcl_jax/configs/recipes.py cnn)
    "table1_resnet50": _stcl(NO_STCL, recipe=lambda: recipes.cnn("resnet50")),
    "table1_resnest101": _stcl(NO_STCL, recipe=lambda: recipes.cnn("resnest101")),
    "table1_cswin_l": _stcl(NO_STCL, recipe=recipes.cswin_l),
    "table1_swin_l": _stcl(NO_STCL),
    # table 2: extra data, no STCL
    "table2_swin_l": _stcl(NO_STCL),
    "table2_ade20k": _stcl(NO_STCL, recipe=lambda: recipes.joint("ade20k", "ade20k_to_vspw")),
    "table2_coco": _stcl(NO_STCL, recipe=lambda: recipes.joint("coco", "coco_panoptic_to_vspw")),
    "table2_coco_pretrain": _stcl(NO_STCL, recipe=recipes.coco_pretrain),  # stage 1 of COCO-pre
    "table2_coco_pre": _stcl(NO_STCL),                    # stage 2: init_from the stage-1 workdir
    # table 3: STCL on the COCO-pre fine-tuning (init_from the table2_coco_pretrain workdir)
    "table3_baseline": _stcl(NO_STCL),
    "table3_stcl_512_t007": _stcl(STCL, 512, 0.07),
    "table3_stcl_512_t005": _stcl(STCL, 512, 0.05),
    "table3_stcl_256_t007": _stcl(STCL, 256, 0.07),
    # table 4: + pseudo-labelled data from the teacher (data.pseudo_dir from python -m stcl_jax.pseudo_label)
    "table4_pseudo": _pseudo,
}


DEFAULT = "table3_stcl_512_t007"  # `configs/paper.py` / `configs/paper.py:runlocal`: the best single-model recipe


def get_config(arg=None):
    name, _, variant = (arg or "").partition(",")
    if name in ("", "runlocal"):
        name, variant = DEFAULT, name
    if name not in VARIANTS:
        raise ValueError(f"configs/paper.py:{arg}: unknown variant {name!r}; variants: {', '.join(VARIANTS)} "
                         "(append ',runlocal' for the tiny one)")
    c = VARIANTS[name]()
    if not c.data.mixture and c.data.num_frames > 1:
        base.synthetic_runlocal(c, variant)
    return base.finish(c, variant)
