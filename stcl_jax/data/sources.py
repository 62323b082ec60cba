"""The sources training draws clips from, and the one label space they share (`training_sources`), read from
`config.data` (its fields: stcl_jax/configs/base.py).

Each source is a split of a build with a share of the clips and a raw mask value -> train id table into the
training label space: VSPW's when any source has a label map (`stcl_jax.data.label_space`), else the main
dataset's own classes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from stcl_jax.data import label_space, records
from stcl_jax.data.datasets import vspw

@dataclasses.dataclass(frozen=True)
class LabelSpace:
    """The classes a model trains and is scored on, and how the raw masks of the main build map onto them.

    Built once per run (`training_sources`, or `scoring_label_space` for a build on its own) and passed to the
    loader, the evaluator and the classifier check."""
    names: tuple[str, ...]
    raw_lut: np.ndarray | None    # uint8 (256,): raw value of the build's masks -> id; None = its own (raw k -> k-1)
    where: str                    # the build (and mapping file) it comes from, for messages

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def check_classifier(self, num_classes: int, what: str) -> None:
        """ValueError naming `what` (a flag, a config field, a checkpoint) unless it predicts these classes."""
        if num_classes != self.num_classes:
            raise ValueError(f"{what} predicts {num_classes} classes, but {self.where} has {self.num_classes}: "
                             f"set --config.model.num_classes={self.num_classes}, or map the build onto VSPW's "
                             "classes with a label map")


def scoring_label_space(data_dir: str, map_name: str = "") -> LabelSpace:
    """The label space the masks of the build `data_dir` are scored in: its own classes, or VSPW's through the
    mapping file `map_name` (stcl_jax.data.label_space)."""
    names = records.dataset_class_names(data_dir)
    if not map_name:
        return LabelSpace(tuple(names), None, data_dir)
    class_lut = label_space.read_label_map(map_name, names, vspw.CLASS_NAMES)
    return LabelSpace(tuple(vspw.CLASS_NAMES), label_space.compose_raw_lut(len(names), class_lut),
                      f"{data_dir} mapped by {map_name}")


@dataclasses.dataclass(frozen=True)
class Source:
    """A split that training draws clips from, with its share and its raw label -> train id table."""
    name: str                 # "train", "pseudo" or the mixture entry's name (the config field it comes from)
    dir: str
    split: str
    weight: float
    label_lut: np.ndarray     # uint8 (256,): raw mask value -> train id of the training label space
    valid_raw: np.ndarray     # bool (256,): raw values the source's masks may hold
    single_frame: bool        # an image dataset: one frame per record
    stcl: bool                # its clips take part in STCL


@dataclasses.dataclass(frozen=True)
class _Spec:
    name: str
    field: str                # the config field it comes from, for error messages
    dir: str
    split: str
    label_map: str
    single_frame_stcl: str
    ratio: float | None       # None: the main dataset (gets what the others leave)


def _source_specs(data_cfg) -> list[_Spec]:
    specs = [_Spec("train", "config.data", data_cfg.dir, data_cfg.train_split, data_cfg.label_map,
                   data_cfg.single_frame_stcl, None)]
    ratio = float(data_cfg.pseudo_ratio)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"config.data.pseudo_ratio={ratio} must be in [0, 1)")
    if ratio > 0:
        if not data_cfg.pseudo_dir:
            raise ValueError("config.data.pseudo_ratio > 0 needs config.data.pseudo_dir (a build with pseudo labels)")
        specs.append(_Spec("pseudo", "config.data.pseudo_dir", data_cfg.pseudo_dir,
                           data_cfg.pseudo_split, "", "spatial", ratio))
    for name, m in sorted(data_cfg.mixture.items()):
        where = f"config.data.mixture.{name}"
        if not m.dir:
            raise ValueError(f"{where}.dir is empty: set it to a build of stcl_jax.data.build (or drop the entry)")
        r = float(m.ratio)
        if not 0.0 < r < 1.0:
            raise ValueError(f"{where}.ratio={r} must be in (0, 1): the share of clips drawn from it")
        specs.append(_Spec(name, where, m.dir, m.split, m.label_map,
                           m.single_frame_stcl, r))
    return specs


def training_sources(data_cfg) -> tuple[LabelSpace, list[Source]]:
    """(the training label space, the sources with their weights and label tables).

    The label space is VSPW's when any source has a label map, else the main dataset's own; a source without a
    map must then have exactly those classes. Its `raw_lut` is the main build's (None without a label map), so it
    is also the space `config.data.dir`'s validation split is scored in. Errors name the config field to fix."""
    specs = _source_specs(data_cfg)
    main_weight = 1.0 - sum(s.ratio for s in specs[1:])
    if main_weight <= 0.0:
        raise ValueError(f"config.data.pseudo_ratio + the config.data.mixture ratios = {1 - main_weight:.3f}: they "
                         "must sum to less than 1 (the rest is drawn from config.data.dir)")
    own = {s.name: records.dataset_class_names(s.dir) for s in specs}
    mapped = any(s.label_map for s in specs)
    target = list(vspw.CLASS_NAMES) if mapped else list(own["train"])
    sources = []
    for s in specs:
        names = own[s.name]
        if s.label_map:
            class_lut = label_space.read_label_map(s.label_map, names, target)
        elif [n.strip() for n in names] == [n.strip() for n in target]:
            class_lut = None
        else:
            raise ValueError(f"{s.field} ({s.dir}): its {len(names)} classes differ from the training label space "
                             f"({len(target)} classes of {'VSPW' if mapped else data_cfg.dir}); give it a label "
                             "mapping file (label_map, e.g. ade20k_to_vspw) or train on one label space")
        if s.single_frame_stcl not in ("spatial", "skip"):
            raise ValueError(f"{s.field}.single_frame_stcl={s.single_frame_stcl!r}: expected 'spatial' or 'skip'")
        single = records.dataset_name(s.dir) != "vspw"
        sources.append(Source(s.name, s.dir, s.split, main_weight if s.ratio is None else s.ratio,
                              label_space.compose_raw_lut(len(names), class_lut),
                              label_space.valid_raw_values(len(names)), single,
                              not (single and s.single_frame_stcl == "skip")))
    main = specs[0]
    where = f"{main.dir} mapped by {main.label_map}" if main.label_map else (
        "the VSPW label space of the mapped sources" if mapped else main.dir)
    return LabelSpace(tuple(target), sources[0].label_lut if main.label_map else None, where), sources
