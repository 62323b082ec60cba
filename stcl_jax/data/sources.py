"""The sources training draws clips from, and the one label space they share (`training_sources`); the fields of
`config.data` with their defaults (`default_data_config`) and of its mixture entries (`mixture_source`).

Each source is a split of a build with a share of the clips and a raw mask value -> train id table into the
training label space: VSPW's when any source has a label map (`stcl_jax.data.label_space`), else the main
dataset's own classes.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from stcl_jax.data import label_space, records
from stcl_jax.data.datasets import vspw

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def default_data_config() -> ml_collections.ConfigDict:
    """The `config.data` fields this module reads, with the paper's values (see configs/common.py)."""
    c = ml_collections.ConfigDict()
    c.dir = ""                     # built dataset (output of stcl_jax.data.build)
    c.train_split = "train"
    c.val_split = "val"
    c.num_frames = 2               # query + reference frames per clip
    c.ref_offsets = (-3, 3)        # reference = query + k, k ~ U{lo..hi} \ {0}, clamped to the video
    c.base_size = (480, 853)       # (h, w) of mmseg's Resize img_scale
    c.scale_range = (0.5, 2.0)
    c.crop_size = (768, 768)
    c.cat_max_ratio = 0.75
    c.flip_prob = 0.5
    c.photometric = True
    c.mean = IMAGENET_MEAN
    c.std = IMAGENET_STD
    c.ignore_index = 255
    c.worker_count = 4             # grain worker processes (0 = main process)
    c.prefetch_buffer = 2          # batches buffered per worker
    c.read_threads = 2             # threads per process producing batches
    c.pseudo_dir = ""              # build holding pseudo-labelled records ("" = none)
    c.pseudo_split = "extra"
    c.pseudo_ratio = 0.0           # share of clips drawn from the pseudo-labelled split
    c.device_normalize = True      # ship uint8 + valid extent, normalise on the accelerator (else float32)
    c.label_map = ""               # mapping file of dir's classes onto VSPW's ("" = keep its own classes)
    c.single_frame_stcl = "spatial"   # image builds in dir: "spatial" (STCL within the frame) or "skip"
    c.mixture = ml_collections.ConfigDict()   # name -> mixture_source(...): more datasets mixed into training
    return c


def mixture_source(dir: str = "", ratio: float = 0.0, label_map: str = "", split: str = "train",  # noqa: A002
                   single_frame_stcl: str = "spatial") -> ml_collections.ConfigDict:
    """One entry of `config.data.mixture`: a build, the share of clips drawn from it, and its label mapping."""
    return ml_collections.ConfigDict(dict(dir=dir, ratio=ratio, label_map=label_map, split=split,
                                          single_frame_stcl=single_frame_stcl))


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
    specs = [_Spec("train", "config.data", data_cfg.dir, data_cfg.train_split, _field(data_cfg, "label_map"),
                   _field(data_cfg, "single_frame_stcl"), None)]
    ratio = float(_field(data_cfg, "pseudo_ratio"))
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"config.data.pseudo_ratio={ratio} must be in [0, 1)")
    if ratio > 0:
        if not _field(data_cfg, "pseudo_dir"):
            raise ValueError("config.data.pseudo_ratio > 0 needs config.data.pseudo_dir (a build with pseudo labels)")
        specs.append(_Spec("pseudo", "config.data.pseudo_dir", _field(data_cfg, "pseudo_dir"),
                           _field(data_cfg, "pseudo_split"), "", "spatial", ratio))
    for name, m in sorted(_field(data_cfg, "mixture").items()):
        where = f"config.data.mixture.{name}"
        if not m.get("dir"):
            raise ValueError(f"{where}.dir is empty: set it to a build of stcl_jax.data.build (or drop the entry)")
        r = float(m.get("ratio", 0.0))
        if not 0.0 < r < 1.0:
            raise ValueError(f"{where}.ratio={r} must be in (0, 1): the share of clips drawn from it")
        specs.append(_Spec(name, where, m["dir"], m.get("split", "train"), m.get("label_map", ""),
                           m.get("single_frame_stcl", "spatial"), r))
    return specs


def training_sources(data_cfg) -> tuple[list[str], list[Source]]:
    """(class names of the training label space, the sources with their weights and label tables).

    The label space is VSPW's when any source has a label map, else the main dataset's own; a source without a
    map must then have exactly those classes. Errors name the config field to fix."""
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
    return target, sources


def _field(cfg, name):
    """cfg.name, or the default when the caller's config predates the field."""
    return cfg.get(name, default_data_config()[name]) if hasattr(cfg, "get") else getattr(cfg, name)
