"""The grain input pipelines: training clips (`make_train_loader`) and whole videos for evaluation
(`iterate_videos`).

Training, per host (as maxtext's grain pipeline):

    record indices of the split -> [process_index::process_count] -> shuffle(seed) -> repeat
      (-> mix with the pseudo-labelled split, weights 1 - pseudo_ratio : pseudo_ratio)
    -> random_map(load clip + augment) -> batch(batch_size_per_host) -> to_iter_dataset -> mp_prefetch(workers)

A clip is the query record plus `num_frames - 1` reference frames of the same video at offsets k drawn uniformly
from `ref_offsets` = (lo, hi) without 0, clamped to the video's first / last frame; the records' `video_start`
field makes that lookup O(1). Randomness comes from grain's per-index generators, so the batches are a function of
(seed, process_index, process_count, step) only, and the iterator state restores a run exactly.
"""

from __future__ import annotations

import grain
import ml_collections
import numpy as np

from stcl_jax.data import augment, records, vspw
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
    return c


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


class ClipLoader(grain.transforms.RandomMap):
    """grain RandomMap: (source id, query record index) -> augmented clip dict."""

    def __init__(self, sources, cfg, with_indices: bool = False):
        self.sources = sources
        self.with_indices = with_indices
        self.num_frames = int(cfg.num_frames)
        self.ref_offsets = tuple(cfg.ref_offsets)
        self.aug = dict(base_size=tuple(cfg.base_size), scale_range=tuple(cfg.scale_range),
                        crop_size=tuple(cfg.crop_size), cat_max_ratio=float(cfg.cat_max_ratio),
                        flip_prob=float(cfg.flip_prob), photometric_distortion=bool(cfg.photometric),
                        mean=tuple(cfg.mean), std=tuple(cfg.std), ignore_index=int(cfg.ignore_index))
        self.ignore_index = int(cfg.ignore_index)

    def random_map(self, element, rng: np.random.Generator):
        source_id, query = element
        src = self.sources[source_id]
        q = src[query]
        idx = clip_indices(rng, query, int(q["frame_index"]), int(q["num_frames"]), int(q["video_start"]),
                           self.num_frames, self.ref_offsets)
        recs = [q] + [src[i] for i in idx[1:]]
        images = [records.decode_image(r["image"]) for r in recs]
        if len({im.shape for im in images}) > 1:
            raise ValueError(f"video {records.text(q['video'])!r}: frames {[im.shape for im in images]} differ in "
                             "size; a clip needs equal-size frames")
        labels = [vspw.raw_to_train_ids(records.decode_mask(r["mask"])) if r["has_label"]
                  else np.full(im.shape[:2], self.ignore_index, np.uint8) for r, im in zip(recs, images)]
        image, label = augment.augment_clip(rng, np.stack(images), np.stack(labels), **self.aug)
        out = {"image": image, "label": label}
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
    """A checkpointable grain DatasetIterator of {"image": float32 (b, T, H, W, 3), "label": int32 (b, T, H, W)}.

    Infinite (epochs reshuffled). `with_indices=True` adds "source" (b,) and "index" (b, T): the split (0 = train,
    1 = pseudo) and record indices of each clip, for tests and debugging. Pass the iterator to
    `grain.checkpoint.CheckpointSave/CheckpointRestore` inside the Orbax checkpoint."""
    if not data_cfg.dir:
        raise ValueError("config.data.dir is empty: set it to a build of stcl_jax.data.build")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if batch_size_per_host < 1:
        raise ValueError(f"batch_size_per_host={batch_size_per_host} must be >= 1")
    parts = [(data_cfg.dir, data_cfg.train_split)]
    ratio = float(_field(data_cfg, "pseudo_ratio"))
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"config.data.pseudo_ratio={ratio} must be in [0, 1)")
    if ratio > 0:
        if not _field(data_cfg, "pseudo_dir"):
            raise ValueError("config.data.pseudo_ratio > 0 needs config.data.pseudo_dir (a build with pseudo labels)")
        parts.append((_field(data_cfg, "pseudo_dir"), _field(data_cfg, "pseudo_split")))
    sources, datasets = [], []
    for i, (d, split) in enumerate(parts):
        src = records.open_split(d, split)
        if len(src) < process_count:
            raise ValueError(f"split {split!r} of {d} has {len(src)} records, fewer than {process_count} hosts")
        sources.append(src)
        ds = grain.MapDataset.range(len(src))[process_index::process_count]
        datasets.append(ds.shuffle(seed=seed + 7919 * i).repeat().map(_Tag(i)))
    ds = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, weights=[1.0 - ratio, ratio])
    ds = ds.random_map(ClipLoader(sources, data_cfg, with_indices), seed=seed)
    ds = ds.batch(batch_size_per_host, drop_remainder=True)
    buffer = int(_field(data_cfg, "prefetch_buffer"))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(_field(data_cfg, "read_threads")),
                                              prefetch_buffer_size=buffer))
    workers = int(_field(data_cfg, "worker_count"))
    if workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
    return iter(it)
