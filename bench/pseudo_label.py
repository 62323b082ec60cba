"""Pseudo-labelling throughput: teacher inference alone vs the whole `label_split` (decode, teacher, threshold,
PNG encode, writes, stats), frames per second and process CPU seconds per frame.

    python bench/pseudo_label.py        # the issue's teacher: ensemble of 2 Swin-L (window 12), 480x853 frames,
                                        # slide 768/512, the paper's 6 scales + flip
    python bench/pseudo_label.py --size micro --window 4 --height 64 --width 96 --crop 64 64 --stride 48 48 \
        --scales 1.0 --videos 2 --frames 4                                              # CPU-sized

Random weights (no download; eval_shape + random fill, so no init compile) and a synthetic VSPW-layout dataset of
the requested frame size built with `stcl_jax.data.build`. The first `label_split` pass compiles (reported
separately); the timed pass labels the same frames into a fresh output folder with the compiled teacher.
"""

import argparse
import json
import os
import resource
import tempfile
import time

import jax
import numpy as np

from stcl_jax import pseudo_label as pl  # noqa: E402
from stcl_jax.data import records  # noqa: E402
from stcl_jax.data.build import build_dataset  # noqa: E402
from stcl_jax.data.synthetic import write_synthetic_vspw  # noqa: E402
from stcl_jax.evaluation import inference  # noqa: E402
from stcl_jax.models import build_segmenter, model_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large")
    p.add_argument("--window", type=int, default=12)
    p.add_argument("--members", type=int, default=2, help="ensemble size")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=853)
    p.add_argument("--mode", default="slide", choices=["slide", "whole"])
    p.add_argument("--crop", type=int, nargs=2, default=(768, 768))
    p.add_argument("--stride", type=int, nargs=2, default=(512, 512))
    p.add_argument("--scales", type=float, nargs="+", default=list(inference.DEFAULT_SCALES))
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--videos", type=int, default=2)
    p.add_argument("--frames", type=int, default=8, help="frames per video")
    p.add_argument("--batch-size", type=int, default=0, help="frames per teacher call (default: one per device)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--json", default="", help="also write the figures here")
    return p.parse_args(argv)


def random_variables(model, shape, seed):
    shapes = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k, "drop_path": k},
                                                 np.zeros(shape, np.float32), train=False), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return rng.uniform(0.5, 1.5, s.shape).astype(s.dtype)
        return rng.normal(0.0, 0.02, s.shape).astype(s.dtype)
    return jax.tree_util.tree_map_with_path(leaf, shapes)


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(argv=None):
    a = parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="bench_pl_")
    t0 = time.perf_counter()
    # write_synthetic_vspw puts ~1/6 of the videos in val and 1/8 in test: ask for enough to get `videos` in train.
    write_synthetic_vspw(os.path.join(tmp, "raw"), a.videos + max(1, a.videos // 3) + 1, a.frames,
                         size=(a.height, a.width), seed=0)
    build_dataset(os.path.join(tmp, "raw"), os.path.join(tmp, "built"), splits=("train",), progress=False)
    data_s = time.perf_counter() - t0

    cfg = model_config(a.size, window_size=a.window, dtype=a.dtype)
    model = build_segmenter(cfg)
    members = [(inference.segmenter_apply(model), random_variables(model, (1, 64, 64, 3), s)) for s in range(a.members)]
    teacher = pl.make_teacher(members, threshold=a.threshold, mode=a.mode, crop=tuple(a.crop),
                              stride=tuple(a.stride), scales=tuple(a.scales), flip=not a.no_flip,
                              batch_size=a.batch_size)
    built = os.path.join(tmp, "built")
    source = records.open_split(built, "train")
    n_frames = len(source)

    t0 = time.perf_counter()
    pl.label_split(teacher, built, "train", os.path.join(tmp, "warm"), max_videos=1)  # compiles
    first_s = time.perf_counter() - t0

    frames = np.stack([records.decode_image(source[i]["image"]) for i in range(n_frames)])
    c0, t0 = cpu_seconds(), time.perf_counter()
    teacher(frames)
    teacher_s, teacher_cpu = time.perf_counter() - t0, cpu_seconds() - c0

    c0, t0 = cpu_seconds(), time.perf_counter()
    counts = pl.label_split(teacher, built, "train", os.path.join(tmp, "timed"))
    total_s, total_cpu = time.perf_counter() - t0, cpu_seconds() - c0
    assert counts["frames"] == n_frames, counts

    result = {
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind} x{jax.local_device_count()}",
        "model": f"{a.size} (window {a.window}, {a.dtype}) x{a.members}", "frame": f"{a.height}x{a.width}",
        "tta": f"{a.mode} crop {tuple(a.crop)} stride {tuple(a.stride)} scales {a.scales} flip {not a.no_flip}",
        "frames": n_frames, "dataset_build_s": round(data_s, 2), "first_video_s_incl_compile": round(first_s, 2),
        "teacher_frames_per_s": round(n_frames / teacher_s, 3),
        "teacher_cpu_s_per_frame": round(teacher_cpu / n_frames, 4),
        "label_split_frames_per_s": round(n_frames / total_s, 3),
        "label_split_cpu_s_per_frame": round(total_cpu / n_frames, 4),
        "overhead_fraction": round(max(total_s - teacher_s, 0.0) / total_s, 3),
    }
    print(json.dumps(result, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
