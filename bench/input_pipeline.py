"""Input pipeline throughput: frames/s of JPEG/PNG decode + clip augmentation (resize 0.5-2.0, 768 crop, flip,
photometric, normalise), for one worker and for K worker processes, with float32 batches normalised on the host
and with uint8 batches (`config.data.device_normalize`, normalised in the train step).

    python bench/input_pipeline.py [--data BUILT_DIR] [--size 480x853] [--crop 768] [--workers 0,2] [--batches 20]

Without --data, a synthetic VSPW at --size (default 480p, the release's frame size) is generated and built in a
temporary folder. "workers 0" runs everything in the main process with one thread: the per-worker rate. Other
counts use grain worker processes (mp_prefetch), as training does. Reports frames/s = clips/s x clip length, plus
the split of one worker's time between decoding and augmentation. The goal is >= 150 frames/s per host.
"""

import argparse
import os
import tempfile
import time

import numpy as np

import benchlib  # noqa: E402  (bench/ is sys.path[0] when a script of it runs)

from stcl_jax.configs.base import base_config  # noqa: E402
from stcl_jax.data import augment, build, pipeline, records, synthetic  # noqa: E402
from stcl_jax.data.datasets import vspw  # noqa: E402


def _size(text):
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def microbench(data_dir, cfg, n=20):
    """(wall, CPU) seconds per frame of decode (JPEG + PNG) and of augmentation (float32 output normalised on the
    host, and uint8 output for normalisation on the device), in this process. CPU time is what a frame costs a
    core even when other programs share the machine."""
    src = records.open_split(data_dir, cfg.train_split)
    recs = [src[i % len(src)] for i in range(n)]
    w0, c0 = time.perf_counter(), time.process_time()
    imgs = [records.decode_image(r["image"]) for r in recs]
    labs = [vspw.raw_to_train_ids(records.decode_mask(r["mask"])) for r in recs]
    decode = ((time.perf_counter() - w0) / n, (time.process_time() - c0) / n)
    aug_kwargs = pipeline.augment_kwargs(cfg)
    t = int(cfg.num_frames)
    frames = n // t * t
    aug = {}
    for name, fn in (("float32", augment.augment_clip), ("uint8", augment.augment_clip_uint8)):
        rng = np.random.default_rng(0)                  # the same draws for both forms
        w0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, n - t + 1, t):
            fn(rng, np.stack(imgs[i:i + t]), np.stack(labs[i:i + t]), **aug_kwargs)
        aug[name] = ((time.perf_counter() - w0) / frames, (time.process_time() - c0) / frames)
    return decode, aug


def throughput(cfg, batch, batches, workers, seed=0):
    cfg = cfg.copy_and_resolve_references()
    cfg.worker_count = workers
    cfg.read_threads = 1
    it = pipeline.make_train_loader(cfg, seed=seed, batch_size_per_host=batch)
    next(it)                                            # start-up (worker processes, file opening)
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    dt = time.perf_counter() - t0
    assert b["image"].shape[:2] == (batch, cfg.num_frames)
    return batches * batch * cfg.num_frames / dt


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="a built dataset (default: generate a synthetic one at --size)")
    p.add_argument("--size", type=_size, default=(480, 853), help="synthetic frame size HxW")
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--clip-length", type=int, default=2)
    p.add_argument("--batch", type=int, default=2, help="clips per batch")
    p.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    p.add_argument("--workers", default="0,2", help="comma-separated worker counts to time")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run: 48x64 frames, crop 32, workers 0,2")
    p.add_argument("--json", default="", help="write the result records (bench/benchlib.py) here")
    a = p.parse_args()
    if a.smoke:
        a.size, a.videos, a.frames, a.crop, a.batches, a.workers = (48, 64), 2, 4, 32, 2, "0,2"

    from absl import flags
    flags.FLAGS.mark_as_parsed()
    with tempfile.TemporaryDirectory() as tmp:
        data = a.data
        if not data:
            raw, data = os.path.join(tmp, "raw"), os.path.join(tmp, "built")
            synthetic.write_synthetic_vspw(raw, a.videos, a.frames, size=a.size, seed=0)
            build.build_dataset(raw, data, splits=("train",), progress=False)
        cfg = base_config().data
        cfg.dir, cfg.crop_size, cfg.num_frames = data, (a.crop, a.crop), a.clip_length
        (dec_wall, dec_cpu), aug = microbench(data, cfg)
        device = f"host, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before timing"
        figures = {"decode_cpu_ms_per_frame": 1e3 * dec_cpu,
                   **{f"augment_{form}_cpu_ms_per_frame": 1e3 * cpu for form, (_, cpu) in aug.items()}}
        for form, (aug_wall, aug_cpu) in aug.items():
            print(f"[{form} output] one process, wall: decode {1e3 * dec_wall:.1f} ms/frame (JPEG+PNG), augmentation "
                  f"{1e3 * aug_wall:.1f} ms/frame -> {1 / (dec_wall + aug_wall):.1f} frames/s")
            print(f"[{form} output] one process, CPU time: decode {1e3 * dec_cpu:.1f} ms/frame, augmentation "
                  f"{1e3 * aug_cpu:.1f} ms/frame -> {1 / (dec_cpu + aug_cpu):.1f} frames/s per busy core")
        print(f"load average before timing the loaders: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for w in (int(x) for x in a.workers.split(",")):
            for device_normalize in (False, True):
                cfg.device_normalize = device_normalize
                fps = throughput(cfg, a.batch, a.batches, w)
                label = "in-process, 1 thread" if w == 0 else f"{w} worker processes"
                form = "uint8, normalised on device" if device_normalize else "float32"
                print(f"loader ({label}, {form}): {fps:.1f} frames/s  (crop {a.crop}, clip {a.clip_length}, "
                      f"batch {a.batch}, {a.batches} batches, {os.cpu_count()} CPUs)", flush=True)
                figures[f"loader_{w}_workers_{'uint8' if device_normalize else 'float32'}_frames_per_s"] = fps
        name = f"input pipeline ({a.size[0]}x{a.size[1]} -> crop {a.crop}, workers {a.workers})"
        records = [benchlib.record(name, "grain", device, figures)]
        benchlib.print_records(records)
        benchlib.write_records(a.json, records)


if __name__ == "__main__":
    main()
