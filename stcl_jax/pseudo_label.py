"""Pseudo-labels (paper section 2.3): a teacher labels frames, confident pixels kept, the rest void.

    python -m stcl_jax.pseudo_label --checkpoints CKPT [CKPT ...] --data DIR --split SPLIT --output OUT
        [--threshold 0.5] [--mode slide|whole] [--crop H W] [--stride H W] [--tta | --scales 0.5 1.0 ... --flip]
        [--config FILE] [--only-unlabelled] [--max-videos N] [--batch-size B] [--distributed auto|on|off]

Teacher: each CKPT is a params-only export (`stcl_jax.export`: model_config.json + Orbax params) or a training
workdir (its newest checkpoint). The teacher's probability is the mean softmax over its members and, for each,
over the TTA views (`stcl_jax.evaluation.inference.ensemble_probs`, the evaluation code). Hard labels: a pixel
gets the top class when its top probability exceeds `threshold` (strictly: > 0.5 in the paper), else void (255).

Output (OUT):
  layout/data/<video>/origin/<frame>.jpg   the frame's JPEG bytes from the build, unchanged
  layout/data/<video>/mask/<frame>.png     the pseudo label as a raw VSPW mask (class id + 1, void 255)
  layout/extra.txt                         the videos
  stats/<video>.jsonl                      per frame: pixels predicted / kept per class (written after the PNG)
  records/                                 the layout built as split "extra" by `stcl_jax.data.build` (training
                                           record format); mix it into training with config.data.pseudo_dir
  report.json, report.md                   kept fraction per class over all frames
A frame that has its stats line is done: a rerun skips it (an interrupted run resumes). Data-parallel: each
process labels its share of the videos (video i -> process i % count), each batch of frames is split over the
local devices; process 0 builds the records once every process is done.
"""

from __future__ import annotations

import json
import logging
import os
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax import cli_errors
from stcl_jax.data import records
from stcl_jax.data.datasets import vspw
from stcl_jax.evaluation import inference
from stcl_jax.files import atomic_write_bytes

log = logging.getLogger("stcl_jax.pseudo_label")


# ---------------------------------------------------------------------------------------------------- teacher --
def threshold_labels(probs: jax.Array, threshold: float, ignore_index: int = vspw.IGNORE_INDEX):
    """The thresholding rule: argmax class where max prob > threshold (the paper: "exceed"), else `ignore_index`.

    probs (..., C) -> (labels uint8 (...), predicted (C,) int32 pixels per argmax class,
    kept (C,) int32 pixels per class that passed the threshold)."""
    top = jnp.max(probs, axis=-1)
    cls = jnp.argmax(probs, axis=-1).astype(jnp.int32)
    keep = top > threshold
    c = probs.shape[-1]
    predicted = jnp.zeros((c,), jnp.int32).at[cls.ravel()].add(1)
    kept = jnp.zeros((c,), jnp.int32).at[cls.ravel()].add(keep.ravel().astype(jnp.int32))
    return jnp.where(keep, cls, ignore_index).astype(jnp.uint8), predicted, kept


def make_teacher(members, *, threshold: float = 0.5, **options) -> inference.Predictor:
    """An `inference.Predictor` over `members` [(apply_fn, variables)] whose call maps frames uint8 (N, H, W, 3)
    to (labels uint8 (N, H, W), predicted (N, C), kept (N, C)): the threshold rule on the averaged probabilities.
    `options`: the Predictor's (mode, crop, stride, scales, flip, batch_size, mean, std)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    return inference.Predictor(members, postprocess=jax.vmap(lambda p: threshold_labels(p, threshold)), **options)


# ------------------------------------------------------------------------------------------------------ files --
def _done_frames(stats_path: str) -> dict[str, dict]:
    """frame name -> stats line of the frames already labelled (a torn last line is ignored: redone)."""
    done = {}
    if os.path.exists(stats_path):
        with open(stats_path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                done[rec["frame"]] = rec
    return done


def _encode_png(raw_mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", raw_mask)
    if not ok:
        raise RuntimeError("could not encode a pseudo-label PNG")
    return buf.tobytes()


def label_split(teacher: inference.Predictor, data_dir: str, split: str, output: str, *, only_unlabelled: bool = False,
                max_videos: int = 0, process_index: int = 0, process_count: int = 1) -> dict:
    """Labels this process's videos of `split` into `output/layout` and `output/stats`; returns counts."""
    source = records.open_split(data_dir, split)
    starts, i = [], 0
    while i < len(source) and (max_videos <= 0 or len(starts) < max_videos):
        starts.append(i)
        i += int(source[i]["num_frames"])
    mine = inference.shard_for_process(starts, process_index, process_count)
    os.makedirs(os.path.join(output, "stats"), exist_ok=True)
    counts = {"videos": 0, "frames": 0, "skipped": 0}
    t0 = time.time()
    for n_video, start in enumerate(mine):
        first = source[start]
        video, n = records.text(first["video"]), int(first["num_frames"])
        stats_path = os.path.join(output, "stats", f"{video}.jsonl")
        done = _done_frames(stats_path)
        recs = [source[start + t] for t in range(n)]
        todo = [r for r in recs if records.text(r["frame_name"]) not in done
                and not (only_unlabelled and bool(r["has_label"]))]
        counts["skipped"] += n - len(todo)
        if todo:
            origin, mask_dir = (os.path.join(output, "layout", "data", video, d) for d in ("origin", "mask"))
            os.makedirs(origin, exist_ok=True)
            os.makedirs(mask_dir, exist_ok=True)
            labels, predicted, kept = teacher(records.stack_video_frames(todo, split))
            with open(stats_path, "a", encoding="utf-8") as stats:
                for r, lab, p, k in zip(todo, labels, predicted, kept):
                    name = records.text(r["frame_name"])
                    atomic_write_bytes(os.path.join(origin, f"{name}.jpg"), bytes(r["image"]))
                    atomic_write_bytes(os.path.join(mask_dir, f"{name}.png"), _encode_png(vspw.train_ids_to_raw(lab)))
                    stats.write(json.dumps({"frame": name, "predicted": p.tolist(), "kept": k.tolist()}) + "\n")
                    stats.flush()
            counts["frames"] += len(todo)
        counts["videos"] += 1
        rate = counts["frames"] / max(time.time() - t0, 1e-9)
        log.info("[pseudo_label] process %d: video %d/%d %s (%d frames labelled, %d skipped), %.2f frames/s",
                 process_index, n_video + 1, len(mine), video, len(todo), n - len(todo), rate)
    return counts


def write_report(output: str, threshold: float) -> dict:
    """Sums every stats file into the kept fraction per class (report.json + report.md); lists the videos."""
    stats_dir = os.path.join(output, "stats")
    videos = sorted(f[: -len(".jsonl")] for f in os.listdir(stats_dir) if f.endswith(".jsonl"))
    predicted = kept = None
    frames = 0
    for video in videos:
        for rec in _done_frames(os.path.join(stats_dir, f"{video}.jsonl")).values():
            p, k = np.asarray(rec["predicted"], np.int64), np.asarray(rec["kept"], np.int64)
            predicted = p if predicted is None else predicted + p
            kept = k if kept is None else kept + k
            frames += 1
    if predicted is None:
        raise ValueError(f"{output}: no frame was labelled (empty split, or --only-unlabelled with none)")
    videos = [v for v in videos if os.path.isdir(os.path.join(output, "layout", "data", v, "mask"))]
    with open(os.path.join(output, "layout", "extra.txt"), "w", encoding="utf-8") as f:
        f.write("".join(v + "\n" for v in videos))
    names = list(vspw.CLASS_NAMES) + [f"class_{c}" for c in range(len(vspw.CLASS_NAMES), len(predicted))]
    per_class = [{"id": c, "name": names[c], "predicted_pixels": int(predicted[c]), "kept_pixels": int(kept[c]),
                  "kept_fraction": float(kept[c] / predicted[c]) if predicted[c] else None}
                 for c in range(len(predicted))]
    report = {"threshold": threshold, "videos": len(videos), "frames": frames,
              "kept_fraction": float(kept.sum() / max(predicted.sum(), 1)), "per_class": per_class}
    with open(os.path.join(output, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    lines = [f"# Pseudo-labels: threshold {threshold}, {frames} frames of {len(videos)} videos, "
             f"{report['kept_fraction']:.2%} of pixels kept", "", "| id | class | predicted px | kept px | kept |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['id']} | {r['name']} | {r['predicted_pixels']} | {r['kept_pixels']} | "
              f"{r['kept_fraction']:.2%} |" for r in per_class if r["predicted_pixels"]]
    with open(os.path.join(output, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return report


def build_records(output: str) -> str:
    """Builds `output/layout` (split "extra") into `output/records` with the data package's builder."""
    from stcl_jax.data.build import build_dataset

    layout, out = os.path.join(output, "layout"), os.path.join(output, "records")
    final = os.path.join(out, "vspw", "480p")
    if os.path.isdir(final):  # a rerun that labelled more frames: rebuild from the complete layout
        import shutil

        shutil.rmtree(out)
    build_dataset(layout, out, splits=("extra",), extra_frames=layout, progress=False)
    return out


# ------------------------------------------------------------------------------------------------------- main --
def main(argv=None) -> int:
    from stcl_jax.evaluation import cli

    p = cli_errors.ArgumentParser(prog="python -m stcl_jax.pseudo_label", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", nargs="+", required=True,
                   help="export dirs or training workdirs; several = an ensemble (mean softmax)")
    p.add_argument("--data", required=True, help="built dataset dir (stcl_jax.data.build --output)")
    p.add_argument("--split", required=True, help="split of --data to label (e.g. extra, test, train)")
    p.add_argument("--output", required=True)
    p.add_argument("--threshold", type=float, default=0.5, help="min top probability to keep a pixel (paper: 0.5)")
    p.add_argument("--only-unlabelled", action="store_true", help="skip frames that already have a label")
    p.add_argument("--max-videos", type=int, default=0, help="0 = all videos of the split")
    p.add_argument("--no-build", action="store_true", help="write layout and stats only, no records")
    cli.add_inference_arguments(p)  # --config, --ensemble, --mode/--crop/--stride, --tta/--scales/--flip, ...
    cli_errors.add_verbose_flag(p)
    a = p.parse_args(argv)
    cli_errors.quiet_logging(a.verbose)
    a.checkpoint, a.ensemble = a.checkpoints[0], [*a.checkpoints[1:], *a.ensemble]
    members, options = cli.members_and_options(a, checkpoint_flag="--checkpoints")
    teacher = make_teacher(members, threshold=a.threshold, **options)
    counts = label_split(teacher, a.data, a.split, a.output, only_unlabelled=a.only_unlabelled,
                         max_videos=a.max_videos, process_index=jax.process_index(),
                         process_count=jax.process_count())
    log.info("process %d: %s", jax.process_index(), counts)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("stcl_jax pseudo_label: all frames labelled")
    if jax.process_index() == 0:
        report = write_report(a.output, a.threshold)
        log.info("kept %.2f%% of %d frames' pixels; report in %s", 100 * report["kept_fraction"], report["frames"],
                 os.path.join(a.output, "report.md"))
        if not a.no_build:
            log.info("records in %s", build_records(a.output))
    return 0


if __name__ == "__main__":
    cli_errors.run(main)
