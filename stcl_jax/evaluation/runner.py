"""Evaluating a split: scoring prediction PNGs against a VSPW folder, or running a model over a built split.

- `score_prediction_dir(pred_dir, data_root, split)`: like the official scripts, reads `DIR/<video>/<frame>.png`
  (the ground truth's size and file names) for every mask of every video of `data_root/<split>.txt`. The PNGs hold
  train ids 0..123 or VSPW ids 1..124: said by the caller (`--pred-ids`), by a `label_ids.json` that predict and
  `--save-predictions` write next to them, or proved by their values (a 124, or a 0); ambiguous -> error. A
  missing file, a wrong size, a colour PNG or a value outside the id space is an error naming the file.
- `evaluate_model(predictor, data_dir, split)`: runs `inference.Predictor` on every video of a built split
  (`stcl_jax.data.records.iterate_videos`) and scores it; optionally writes the prediction PNGs. With several
  processes each one takes videos i % count == index and the scores are reduced once at the end.
Both return `metrics.VSPWEvaluator.result()` plus `class_names`, and log progress (videos, frames/s, ETA).
"""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
from PIL import Image

from stcl_jax.data.datasets import vspw
from stcl_jax.evaluation import metrics
from stcl_jax.files import atomic_write_json

log = logging.getLogger("stcl_jax.evaluation")


# ------------------------------------------------------------------------------------------------ prediction PNGs
ID_SPACES = ("train", "vspw")    # train ids 0..C-1, or VSPW's raw ids 1..C (train id + 1, `predict --vspw-ids`)
ID_FILE = "label_ids.json"       # {"ids": "train" | "vspw", "num_classes": C}: written next to prediction PNGs


def write_id_space(folder: str, ids: str, num_classes: int = vspw.NUM_CLASSES) -> None:
    """Records in `folder/label_ids.json` which ids the prediction PNGs under `folder` hold."""
    if ids not in ID_SPACES:
        raise ValueError(f"id space {ids!r}: expected one of {ID_SPACES}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ID_FILE), "w") as f:
        json.dump({"ids": ids, "num_classes": num_classes}, f)


def read_id_space(folder: str) -> str | None:
    """The id space recorded in `folder/label_ids.json`, or None if there is no such file."""
    path = os.path.join(folder, ID_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            ids = json.load(f)["ids"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a label-id file ({{\"ids\": \"train\" | \"vspw\"}}): {e}") from None
    if ids not in ID_SPACES:
        raise ValueError(f"{path}: ids {ids!r} is not one of {ID_SPACES}")
    return ids


def _read_png(path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prediction {path} is missing: every ground-truth mask needs a prediction PNG "
                                "with the same video folder and file name")
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except OSError as e:
        raise ValueError(f"prediction {path} is not a readable PNG: {e}") from e


def read_prediction(path: str, shape: tuple[int, int], num_classes: int = vspw.NUM_CLASSES,
                    ids: str = "train") -> np.ndarray:
    """uint8 (H, W) train ids of one prediction PNG holding `ids` ("train": 0..C-1, "vspw": 1..C), checked
    against the ground truth's `shape`."""
    pred = _read_png(path)
    if pred.ndim != 2:
        raise ValueError(f"prediction {path} has shape {pred.shape}: expected a single-channel (H, W) label PNG "
                         "of class ids, not a colour image")
    if pred.shape != tuple(shape):
        raise ValueError(f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} (WxH) but its ground truth is "
                         f"{shape[1]}x{shape[0]}: predictions must have the ground truth's resolution")
    if ids == "vspw":
        outside = pred[(pred < 1) | (pred > num_classes)]
        if outside.size:
            raise ValueError(f"prediction {path} holds value {int(outside[0])}: these predictions are scored as "
                             f"VSPW ids 1..{num_classes} (--pred-ids vspw)")
        return (pred - 1).astype(np.uint8)
    if pred.size and int(pred.max()) >= num_classes:
        hint = " (raw VSPW ids? pass --pred-ids vspw)" if int(pred.max()) == num_classes else ""
        raise ValueError(f"prediction {path} holds value {int(pred.max())}: these predictions are scored as train "
                         f"ids 0..{num_classes - 1} (VSPW mask value - 1){hint}")
    return pred.astype(np.uint8)


def write_prediction(path: str, ids: np.ndarray, vspw_ids: bool = False) -> None:
    """Writes train ids (H, W) as a single-channel PNG; `vspw_ids` stores VSPW's 1..124 (id + 1) instead."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    ids = np.asarray(ids, np.uint8)
    Image.fromarray(vspw.train_ids_to_raw(ids) if vspw_ids else ids, mode="L").save(path)


def resolve_id_space(pred_dir: str, videos: list[str], paths: list[str], ids: str = "auto",
                     num_classes: int = vspw.NUM_CLASSES) -> str:
    """The id space of the prediction folder: `ids` if given ("train" / "vspw"), checked against any
    label_ids.json in `pred_dir` or its video folders; with "auto", what those files say, else what the values
    of the PNGs at `paths` prove: a value `num_classes` exists only in VSPW ids, a 0 only in train ids. Neither,
    both, or files that disagree: ValueError asking for --pred-ids."""
    if ids not in ("auto", *ID_SPACES):
        raise ValueError(f"--pred-ids {ids!r}: expected auto, train or vspw")
    declared = {os.path.join(d, ID_FILE): s for d in (pred_dir, *(os.path.join(pred_dir, v) for v in videos))
                if (s := read_id_space(d)) is not None}
    if len(set(declared.values())) > 1:
        raise ValueError("prediction folders disagree on their ids: " + ", ".join(f"{p} says {s!r}"
                                                                               for p, s in declared.items()))
    if declared:
        path, said = next(iter(declared.items()))
        if ids not in ("auto", said):
            raise ValueError(f"--pred-ids {ids} but {path} says these predictions hold {said!r} ids")
        return said
    if ids != "auto":
        return ids
    seen = np.zeros(256, bool)
    for path in paths:
        seen |= np.bincount(_read_png(path).ravel().astype(np.uint8), minlength=256) > 0
    zero, top = bool(seen[0]), bool(seen[num_classes])
    if zero != top:
        space = "vspw" if top else "train"
        log.info("predictions in %s hold %s ids (value %d found); say --pred-ids to be explicit", pred_dir,
                 space, num_classes if top else 0)
        return space
    what = f"both 0 and {num_classes}" if zero else f"neither 0 nor {num_classes}"
    raise ValueError(f"predictions in {pred_dir} hold {what}, so their ids are ambiguous: pass --pred-ids train "
                     f"(0..{num_classes - 1}) or --pred-ids vspw (1..{num_classes}, `predict --vspw-ids`)")


def _read_mask(path: str) -> np.ndarray:
    with Image.open(path) as img:
        mask = np.asarray(img)
    bad = vspw.invalid_raw_values(mask) if mask.ndim == 2 else None
    if mask.ndim != 2 or bad:
        raise ValueError(f"ground-truth mask {path} is not a VSPW mask (shape {mask.shape}, bad values {bad})")
    return mask


# ------------------------------------------------------------------------------------------------ progress
class _Progress:
    """A progress line per video, at most one every `every_s` seconds (image builds have thousands of 1-frame
    videos) besides the first."""

    def __init__(self, total_videos: int, what: str, every_s: float = 5.0):
        self.total, self.what, self.start, self.frames, self.videos = total_videos, what, time.time(), 0, 0
        self.every_s, self.last = every_s, None

    def step(self, name: str, frames: int):
        self.videos += 1
        self.frames += frames
        now = time.time()
        if self.last is not None and now - self.last < self.every_s and self.videos != self.total:
            return
        self.last = now
        dt = max(now - self.start, 1e-9)
        eta = f", ETA {dt / self.videos * (self.total - self.videos):.0f} s" if self.total > 0 else ""
        log.info("%s %d/%s %s: %d frames, %.2f frames/s%s", self.what, self.videos, self.total or "?", name,
                 frames, self.frames / dt, eta)


# ------------------------------------------------------------------------------------------------ the two forms
def score_prediction_dir(pred_dir: str, data_root: str, split: str, *, vc_protocol: str = "vspw",
                         max_videos: int = 0, devices=None, ids: str = "auto") -> dict:
    """Scores `pred_dir/<video>/<frame>.png` against `data_root` (extracted VSPW_480p layout), as the official
    scripts do: every mask of every video of `<split>.txt`, frames in frame-number order. `ids`: the id space of
    the PNGs, "train", "vspw" or "auto" (`resolve_id_space`); the result records it as "prediction_ids"."""
    if not os.path.isdir(pred_dir):
        raise FileNotFoundError(f"--predictions {pred_dir} is not a directory")
    videos = vspw.read_split(data_root, split)
    videos = videos[:max_videos] if max_videos > 0 else videos
    masks_of = {v: _mask_files(data_root, v, split) for v in videos}
    paths = {v: [os.path.join(pred_dir, v, stem + vspw.MASK_EXT) for stem, _ in masks_of[v]] for v in videos}
    space = resolve_id_space(pred_dir, videos, [p for v in videos for p in paths[v]], ids)
    evaluator = metrics.VSPWEvaluator(vc_protocol=vc_protocol, devices=devices)
    progress = _Progress(len(videos), "scored")
    for video in videos:
        masks = np.stack([_read_mask(path) for _, path in masks_of[video]])
        preds = np.stack([read_prediction(p, masks.shape[1:], ids=space) for p in paths[video]])
        evaluator.add_video(video, masks, preds)
        progress.step(video, len(masks))
    result = _finish(evaluator.result())
    result["prediction_ids"] = space
    return result


def _mask_files(data_root: str, video: str, split: str) -> list[tuple[str, str]]:
    """[(frame name, path)] of the ground-truth masks of `video`, in frame order."""
    folder = os.path.join(vspw.video_dir(data_root, video), "mask")
    files, problems = vspw.list_folder(folder, vspw.MASK_EXTS, "mask") if os.path.isdir(folder) else ([], [])
    if problems:
        raise ValueError(f"ground truth {problems[0][0]}: {problems[0][1]}")
    if not files:
        raise FileNotFoundError(f"video {video} of {split}.txt has no ground-truth masks in {folder}")
    return [(stem, os.path.join(folder, fname)) for stem, fname in files]


def evaluate_model(predictor, data_dir: str, split: str, *, vc_protocol: str = "vspw", max_videos: int = 0,
                   save_predictions: str | None = None, vspw_ids: bool = False, process_index: int | None = None,
                   process_count: int | None = None, num_classes: int = vspw.NUM_CLASSES,
                   raw_lut: np.ndarray | None = None, class_names=None) -> dict:
    """Runs `predictor` (frames uint8 (N, H, W, 3) -> train ids (N, H, W)) over the videos of a built split and
    scores them. Multi-process: call it on every process (the final reduction is collective).

    A build of another label space (ADE20K, COCO: a video per image) is scored over its `num_classes` classes,
    or, with `raw_lut` (raw mask value -> train id, from `stcl_jax.data.label_space`), in the mapped space."""
    import jax

    from stcl_jax.data.records import iterate_videos

    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    evaluator = metrics.VSPWEvaluator(num_classes, vc_protocol=vc_protocol)
    progress = _Progress(max_videos or 0, "evaluated")
    for video, frame_names, frames, masks in iterate_videos(data_dir, split, max_videos, process_index=index,
                                                            process_count=count):
        if masks is None:
            raise ValueError(f"video {video} of split {split!r} in {data_dir} has no labels: evaluate a labelled "
                             "split (val), or use `python -m stcl_jax.predict` for unlabelled frames")
        if raw_lut is not None:      # into the mapped label space, in the raw encoding (id + 1, ignore = 255)
            ids = raw_lut[masks]
            masks = np.where(ids == vspw.IGNORE_INDEX, vspw.RAW_VOID, ids + 1).astype(np.uint8)
        preds = predictor(frames)
        evaluator.add_video(video, masks, preds)
        if save_predictions:
            if progress.videos == 0:
                write_id_space(save_predictions, "vspw" if vspw_ids else "train", num_classes)
            for name, pred in zip(frame_names, preds):
                write_prediction(os.path.join(save_predictions, video, name + vspw.MASK_EXT), pred, vspw_ids)
        progress.step(video, len(frames))
    return _finish(evaluator.result(), class_names)


def evaluate_segmenter(model, variables, config, space, *, max_videos: int | None = None) -> dict:
    """Scores a `build_segmenter` module on `config.data.val_split` of `config.data.dir` in the label space
    `space` (`stcl_jax.data.sources.LabelSpace`) with the inference settings of `config.eval` (mode, crop,
    stride; max_videos) and `config.data` (mean, std): the training loop's periodic evaluation. `variables` must be addressable by this process (gather FSDP-sharded params
    with `multihost_utils.process_allgather` first); call it on every process."""
    from stcl_jax.evaluation import inference

    predictor = inference.Predictor([(inference.segmenter_apply(model), variables)], mode=config.eval.mode,
                                    crop=tuple(config.eval.crop), stride=tuple(config.eval.stride),
                                    mean=tuple(config.data.mean), std=tuple(config.data.std))
    limit = config.eval.max_videos if max_videos is None else max_videos
    space.check_classifier(config.model.num_classes, f"config.model.num_classes={config.model.num_classes}")
    return evaluate_model(predictor, config.data.dir, config.data.val_split, max_videos=limit,
                          num_classes=space.num_classes, raw_lut=space.raw_lut, class_names=list(space.names))


def _finish(result: dict, class_names=None) -> dict:
    result["class_names"] = list(vspw.CLASS_NAMES if class_names is None else class_names)
    return result


def write_json(result: dict, path: str) -> None:
    atomic_write_json(path, metrics.json_ready(result))
