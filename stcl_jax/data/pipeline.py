"""The grain input pipeline of training clips (`make_train_loader`); whole videos for evaluation are
`stcl_jax.data.records.iterate_videos`, the sources and their label tables `stcl_jax.data.sources`.

Training, per host (as maxtext's grain pipeline):

    record indices of the split -> [process_index::process_count] -> shuffle(seed) -> repeat
      (-> mix with the pseudo-labelled split and the mixture's builds, weights = their ratios, dir the rest)
    -> random_map(load clip + augment) -> batch(batch_size_per_host) -> to_iter_dataset -> mp_prefetch(workers)

A clip is the query record plus `num_frames - 1` reference frames of the same video at offsets k drawn uniformly
from `ref_offsets` = (lo, hi) without 0, clamped to the video's first / last frame; the records' `video_start`
field makes that lookup O(1).

Several datasets train together (`config.data.mixture`, e.g. ADE20K or COCO next to VSPW): each source has a
ratio and maps its raw masks into ONE label space (the main dataset's classes, or VSPW's through a mapping file,
see `stcl_jax.data.label_space`). A source built from images (ADE20K, COCO) gives single-frame samples: the frame
fills the clip's T slots (augmented once), the repeats carry only ignore labels (so CE counts the frame once and
the STCL contrast is spatial, within the one frame), and `single_frame_stcl="skip"` leaves the sample out of STCL
altogether. Every batch has "stcl" (b,) bool: whether each clip takes part in STCL.

Randomness comes from grain's per-index generators, so the batches are a function of (seed, process_index,
process_count, step) only, and the iterator state (mixtures included) restores a run exactly.
"""

from __future__ import annotations

import grain
import numpy as np

from stcl_jax.data import augment, label_space, records
from stcl_jax.data.sources import training_sources


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
        self.uint8 = bool(cfg.device_normalize)

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
        return label_space.apply_raw_lut(records.decode_mask(record["mask"]), spec.label_lut, spec.valid_raw, where)

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
                      batch_size_per_host: int, with_indices: bool = False, sources=None):
    """A checkpointable grain DatasetIterator of {"image": (b, T, H, W, 3), "label": uint8 (b, T, H, W),
    "stcl": bool (b,)}: images float32 normalised, or with `device_normalize` uint8 padded with 0 plus
    "image_hw" int32 (b, 2), the valid extent (`stcl_jax.training.inputs.normalize_padded` finishes them).

    Infinite (epochs reshuffled). `with_indices=True` adds "source" (b,) and "index" (b, T): the source (position
    in `training_sources(data_cfg)[1]`: 0 = train, then pseudo, then mixture entries by name) and record indices
    of each clip, for tests and debugging. `sources`: `training_sources(data_cfg)[1]` when the caller has them
    (read from the builds' metadata otherwise). Pass the iterator to
    `grain.checkpoint.CheckpointSave/CheckpointRestore` inside the Orbax checkpoint."""
    if not data_cfg.dir:
        raise ValueError("config.data.dir is empty: set it to a build of stcl_jax.data.build")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if batch_size_per_host < 1:
        raise ValueError(f"batch_size_per_host={batch_size_per_host} must be >= 1")
    specs = training_sources(data_cfg)[1] if sources is None else sources
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
    buffer = int(data_cfg.prefetch_buffer)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(data_cfg.read_threads),
                                              prefetch_buffer_size=buffer))
    workers = int(data_cfg.worker_count)
    if workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer))
    return iter(it)
