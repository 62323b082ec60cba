"""The grain input pipelines: training clips (`make_train_loader`) and whole videos for evaluation
(`iterate_videos`).

Training, per host (as maxtext's grain pipeline):

    record indices of the split -> [process_index::process_count] -> shuffle(seed) -> repeat
      (-> mix with the pseudo-labelled split and the mixture's builds, weights = their ratios, dir the rest)
    -> random_map(load clip + augment) -> batch(batch_size_per_host) -> to_iter_dataset -> mp_prefetch(workers)

A clip is the query record plus `num_frames - 1` reference frames of the same video at offsets k drawn uniformly
from `ref_offsets` = (lo, hi) without 0, clamped to the video's first / last frame; the records' `video_start`
field makes that lookup O(1).

Several datasets train together (`config.data.mixture`, e.g. ADE20K or COCO next to VSPW): each source has a
ratio and maps its raw masks into ONE label space (the main dataset's classes, or VSPW's through a mapping file,
see `stcl_jax.data.label_map`). A source built from images (ADE20K, COCO) gives single-frame samples: the frame
fills the clip's T slots (augmented once), the repeats carry only ignore labels (so CE counts the frame once and
the STCL contrast is spatial, within the one frame), and `single_frame_stcl="skip"` leaves the sample out of STCL
altogether. Every batch has "stcl" (b,) bool: whether each clip takes part in STCL.

Randomness comes from grain's per-index generators, so the batches are a function of (seed, process_index,
process_count, step) only, and the iterator state (mixtures included) restores a run exactly.
"""

from __future__ import annotations

import dataclasses

import grain
import ml_collections
import numpy as np

from stcl_jax.data import augment, label_map, records, vspw
from stcl_jax.data.records import iterate_videos  # noqa: F401  (part of this module's contract)

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
            class_lut = label_map.read_label_map(s.label_map, names, target)
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
                              label_map.compose_raw_lut(len(names), class_lut), label_map.valid_raw_values(len(names)),
                              single, not (single and s.single_frame_stcl == "skip")))
    return target, sources


def _field(cfg, name):
    """cfg.name, or the default when the caller's config predates the field."""
    return cfg.get(name, default_data_config()[name]) if hasattr(cfg, "get") else getattr(cfg, name)


def clip_indices(rng: np.random.Generator, query: int, frame_index: int, num_frames_in_video: int,
                 video_start: int, clip_length: int, ref_offsets) -> list[int]:
    """Record indices of a clip: the query record, then clip_length - 1 references at query + k of the same video,
    k ~ uniform over [lo, hi] without 0, clamped to the video."""
    lo, hi = int(ref_offsets[0]), int(ref_offsets[1])
    choices = np.array([k for k in range(lo, hi + 1) if k != 0])
    if clip_length > 1 and choices.size == 0:
        raise ValueError(f"config.data.ref_offsets={ref_offsets} leaves no non-zero offset for the reference frames")
    out = [query]
    for k in rng.choice(choices, clip_length - 1) if clip_length > 1 else []:
        out.append(video_start + int(np.clip(frame_index + k, 0, num_frames_in_video - 1)))
    return out


class _Tag:
    """index -> (source id, index): says which split a query index belongs to after mixing."""

    def __init__(self, source_id: int):
        self.source_id = source_id

    def __call__(self, index):
        return self.source_id, int(index)


def augment_kwargs(cfg) -> dict:
    """The `augment.augment_clip` keyword arguments of `config.data`."""
    return dict(base_size=tuple(cfg.base_size), scale_range=tuple(cfg.scale_range), crop_size=tuple(cfg.crop_size),
                cat_max_ratio=float(cfg.cat_max_ratio), flip_prob=float(cfg.flip_prob),
                photometric_distortion=bool(cfg.photometric), mean=tuple(cfg.mean), std=tuple(cfg.std),
                ignore_index=int(cfg.ignore_index))


class ClipLoader(grain.transforms.RandomMap):
    """grain RandomMap: (source id, query record index) -> augmented clip dict.

    `sources`: the random-access record sources; `specs`: their `Source`s (label tables, single-frame flags)."""

    def __init__(self, sources, specs, cfg, with_indices: bool = False):
        self.sources = sources
        self.specs = specs
        self.with_indices = with_indices
        self.num_frames = int(cfg.num_frames)
        self.ref_offsets = tuple(cfg.ref_offsets)
        self.aug = augment_kwargs(cfg)
        self.ignore_index = int(cfg.ignore_index)
        self.uint8 = bool(_field(cfg, "device_normalize"))

    def _augment(self, rng, images, labels):
        """(images, labels) float32 normalised, or (uint8 images, labels, valid (h, w)) for device_normalize."""
        if self.uint8:
            return augment.augment_clip_uint8(rng, images, labels, **self.aug)
        return augment.augment_clip(rng, images, labels, **self.aug)

    def _labels(self, source_id, record, shape):
        if not record["has_label"]:
            return np.full(shape, self.ignore_index, np.uint8)
        spec = self.specs[source_id]
        where = f"record {records.text(record['video'])}/{records.text(record['frame_name'])} of {spec.dir}"
        return label_map.apply_raw_lut(records.decode_mask(record["mask"]), spec.label_lut, spec.valid_raw, where)

    def random_map(self, element, rng: np.random.Generator):
        source_id, query = element
        src = self.sources[source_id]
        single = self.specs[source_id].single_frame
        q = src[query]
        if single:    # an image: augmented once, repeated to fill the clip, the repeats labelled ignore
            idx = [query] * self.num_frames
            image = records.decode_image(q["image"])
            img, lab, *hw = self._augment(rng, image[None], self._labels(source_id, q, image.shape[:2])[None])
            image = np.repeat(img, self.num_frames, axis=0)
            label = np.concatenate([lab, np.full((self.num_frames - 1, *lab.shape[1:]), self.ignore_index,
                                                 lab.dtype)])
        else:
            idx = clip_indices(rng, query, int(q["frame_index"]), int(q["num_frames"]), int(q["video_start"]),
                               self.num_frames, self.ref_offsets)
            recs = [q] + [src[i] for i in idx[1:]]
            images = [records.decode_image(r["image"]) for r in recs]
            if len({im.shape for im in images}) > 1:
                raise ValueError(f"video {records.text(q['video'])!r}: frames {[im.shape for im in images]} differ "
                                 "in size; a clip needs equal-size frames")
            labels = [self._labels(source_id, r, im.shape[:2]) for r, im in zip(recs, images)]
            image, label, *hw = self._augment(rng, np.stack(images), np.stack(labels))
        out = {"image": image, "label": label,
               "stcl": np.bool_(self.specs[source_id].stcl)}
        if hw:
            out["image_hw"] = hw[0]
        if self.with_indices:
            out["source"] = np.int32(source_id)
            out["index"] = np.asarray(idx, np.int64)
        return out


def _ensure_absl_flags_parsed():
    """grain's worker processes read absl flags; outside absl.app they are unparsed (environment.md)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_train_loader(data_cfg, *, seed: int, process_index: int = 0, process_count: int = 1,
                      batch_size_per_host: int, with_indices: bool = False):
    """A checkpointable grain DatasetIterator of {"image": (b, T, H, W, 3), "label": uint8 (b, T, H, W),
    "stcl": bool (b,)}: images float32 normalised, or with `device_normalize` uint8 padded with 0 plus
    "image_hw" int32 (b, 2), the valid extent (`stcl_jax.training.inputs.normalize_padded` finishes them).

    Infinite (epochs reshuffled). `with_indices=True` adds "source" (b,) and "index" (b, T): the source (position
    in `training_sources(data_cfg)[1]`: 0 = train, then pseudo, then mixture entries by name) and record indices
    of each clip, for tests and debugging. Pass the iterator to
    `grain.checkpoint.CheckpointSave/CheckpointRestore` inside the Orbax checkpoint."""
    if not data_cfg.dir:
        raise ValueError("config.data.dir is empty: set it to a build of stcl_jax.data.build")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if batch_size_per_host < 1:
        raise ValueError(f"batch_size_per_host={batch_size_per_host} must be >= 1")
    _, specs = training_sources(data_cfg)
    sources, datasets = [], []
    for i, spec in enumerate(specs):
        src = records.open_split(spec.dir, spec.split)
        if len(src) < process_count:
            raise ValueError(f"split {spec.split!r} of {spec.dir} has {len(src)} records, fewer than "
                             f"{process_count} hosts")
        sources.append(src)
        ds = grain.MapDataset.range(len(src))[process_index::process_count]
        datasets.append(ds.shuffle(seed=seed + 7919 * i).repeat().map(_Tag(i)))
    ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights=[s.weight for s in specs])
    ds = ds.random_map(ClipLoader(sources, specs, data_cfg, with_indices), seed=seed)
    ds = ds.batch(batch_size_per_host, drop_remainder=True)
    buffer = int(_field(data_cfg, "prefetch_buffer"))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(_field(data_cfg, "read_threads")),
                                              prefetch_buffer_size=buffer))
    workers = int(_field(data_cfg, "worker_count"))
    if workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
    return iter(it)
