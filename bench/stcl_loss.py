"""STCL loss benchmark: forward+backward time and memory, tiled vs dense, against the roofline of its einsums.

    python bench/stcl_loss.py                      # the issue's sizes: B=8, T=2, D=512 at 96x96 and 192x192, bf16
    python bench/stcl_loss.py --sizes 24,32 --batch 2 --dim 64 --dtype float32 --steps 3   # CPU-sized

Per size: `jax.value_and_grad` of `spatial_temporal_consistency_loss` (jitted once) on random features with
blob-shaped label maps (smooth random fields -> argmax over `--classes`, the reference frames shifted copies of
the query frame, `--ignore` of the pixels void), as VSPW maps look at feature resolution.

Reported per implementation: median step time, the compiled temporaries (`memory_analysis()`, every backend) and
the device's peak bytes in use (GPUs), the einsum FLOPs and the time they would take at `--peak_tflops` (known
for H100/H200/A100 bf16) and at the measured rate of the same tile einsums alone (a scan of `einsum + sum` over
the contrast tiles, timed separately). FLOPs: the tiled loss does 5 einsum passes of 2*B*M*N*D each
(forward: negatives, then positives; backward: scores, dZ_anchor, dZ_contrast) with M = h*w anchors and
N = T*h*w contrast pixels per clip; the dense baseline does 3 (scores, and the two gradient products).
The dense baseline runs only where its compiled temporaries fit (`--dense_limit_gib`, or the GPU's memory).

"sorted" is the tiled loss with `sort_by_label=True`: each clip's pixels sorted by label so the positive pass
visits only the contrast tiles whose labels overlap the anchor tile's (one span per anchor tile for the whole
batch); its einsum work is 4 + (visited fraction) passes. The bench prints that fraction for the blob maps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax.losses import spatial_temporal_consistency_loss as stcl
from stcl_jax.losses.stcl import balanced_tile  # the tile sizes the loss uses

# Dense peak TFLOP/s per device for bf16 inputs (vendor datasheets, SXM parts); fp32 here means TF32 on GPUs.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="clips B")
    p.add_argument("--frames", type=int, default=2, help="frames per clip T (query + references)")
    p.add_argument("--sizes", default="96,192", help="comma-separated feature sizes h (= w)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimension D")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--classes", type=int, default=124, help="label vocabulary of the blob maps")
    p.add_argument("--blob", type=int, default=12, help="blob scale in pixels (smaller = more segments)")
    p.add_argument("--ignore", type=float, default=0.05, help="fraction of void pixels")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--anchor_tile", type=int, default=1024)
    p.add_argument("--contrast_tile", type=int, default=2048)
    p.add_argument("--impl", default="tiled,sorted,dense", help="implementations: tiled,sorted,dense")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--dense_limit_gib", type=float, default=8.0, help="skip dense above this (non-GPU backends)")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="device peak; 0 = from the device name")
    p.add_argument("--compile_only", action="store_true", help="compile and report memory, run nothing")
    p.add_argument("--stats_only", action="store_true", help="only the label-sorted tile statistics (no JAX)")
    p.add_argument("--json", default="", help="write the results here")
    return p.parse_args(argv)


def blob_labels(rng, batch, frames, size, classes, blob, ignore):
    """(B, T, size, size) int32 blob label maps; frames 1.. are the query frame shifted by a few pixels."""
    coarse = max(2, size // blob)
    out = np.empty((batch, frames, size, size), np.int32)
    for b in range(batch):
        present = rng.choice(classes, size=min(classes, 12), replace=False)  # a scene holds ~12 classes
        field = rng.normal(size=(len(present), coarse + 1, coarse + 1))
        idx = np.linspace(0, coarse, size + 8)  # bilinear upsampling of the coarse field (with a margin)
        i0 = np.minimum(idx.astype(int), coarse - 1)
        f = idx - i0
        rows = field[:, i0] * (1 - f)[None, :, None] + field[:, i0 + 1] * f[None, :, None]
        smooth = rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f
        labels = present[np.argmax(smooth, axis=0)]
        for t in range(frames):
            dy, dx = (0, 0) if t == 0 else rng.integers(0, 9, size=2)
            out[b, t] = labels[dy:dy + size, dx:dx + size]
    out[rng.random(out.shape) < ignore] = 255
    return out


def positive_tile_fraction(labels, anchor_tile, contrast_tile):
    """Label-sorted tiles of the positive pass: (per-clip fractions of tile pairs holding a same-label pair,
    fraction of tile pairs the batched loop visits: per anchor tile, the span of contrast tiles over all clips)."""
    b, t = labels.shape[:2]
    key = lambda x: np.sort(np.where(x == 255, np.iinfo(np.int32).max, x), axis=1)
    query, contrast = key(labels[:, 0].reshape(b, -1)), key(labels.reshape(b, -1))
    ta, tc = balanced_tile(query.shape[1], anchor_tile), balanced_tile(contrast.shape[1], contrast_tile)
    na, nc = -(-query.shape[1] // ta), -(-contrast.shape[1] // tc)
    need = np.zeros((b, na, nc), bool)
    for g in range(b):
        for i in range(na):
            a = set(query[g, i * ta:(i + 1) * ta].tolist()) - {np.iinfo(np.int32).max}
            for j in range(nc):
                need[g, i, j] = bool(a & set(contrast[g, j * tc:(j + 1) * tc].tolist()))
    per_clip = need.mean(axis=(1, 2))
    any_clip = need.any(axis=0)
    first = np.where(any_clip.any(1), any_clip.argmax(1), 0)
    last = np.where(any_clip.any(1), nc - any_clip[:, ::-1].argmax(1), 0)
    return per_clip, float((last - first).sum() / (na * nc))


def time_fn(fn, args, steps, cpu_times=None):
    """Median wall seconds per call; `cpu_times` (a list) also gets the process CPU seconds per call, a figure
    that shared CPUs do not inflate (on a CPU backend it is the work summed over XLA's threads)."""
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times, cpu = [], []
    for _ in range(steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if cpu_times is not None:
        cpu_times.append(statistics.median(cpu))
    return statistics.median(times)


def einsum_pass_time(feats, args, steps):
    """One tiled einsum pass alone: anchors x contrast tiles, each reduced so XLA cannot drop it."""
    b, t, h, w, d = feats.shape
    m, n = h * w, t * h * w
    ta, tc = balanced_tile(m, args.anchor_tile), balanced_tile(n, args.contrast_tile)
    za = feats[:, 0].reshape(b, m, d)[:, :m - m % ta].reshape(b, -1, ta, d).swapaxes(0, 1)
    zc = feats.reshape(b, n, d)[:, :n - n % tc].reshape(b, -1, tc, d).swapaxes(0, 1)

    @jax.jit
    def one_pass(za, zc):
        def per_anchor_tile(a):
            def step(acc, c):
                s = jnp.einsum("bad,bcd->bac", a, c, preferred_element_type=jnp.float32)
                return acc + jnp.sum(s, axis=-1), None
            return jax.lax.scan(step, jnp.zeros(a.shape[:2], jnp.float32), zc)[0]
        return jax.lax.map(per_anchor_tile, za)

    cpu = []
    seconds = time_fn(one_pass, (za, zc), steps, cpu)
    scale = (m * n) / (za.shape[0] * ta * zc.shape[0] * tc)  # scale to the untruncated problem
    return seconds * scale, cpu[0] * scale


def peak_tflops(args, device):
    if args.peak_tflops:
        return args.peak_tflops
    return next((v for k, v in PEAK_TFLOPS.items() if k in device.device_kind), 0.0)


def run_size(size, args, rng, device):
    b, t, d = args.batch, args.frames, args.dim
    m, n = size * size, t * size * size
    labels = jnp.asarray(blob_labels(rng, b, t, size, args.classes, args.blob, args.ignore))
    shape, dtype = (b, t, size, size, d), jnp.dtype(args.dtype)
    feats = (jax.ShapeDtypeStruct(shape, dtype) if args.compile_only  # abstract: nothing is allocated
             else jax.random.normal(jax.random.PRNGKey(size), shape, dtype))
    pass_flops = 2.0 * b * m * n * d
    peak = peak_tflops(args, device)
    row = {"size": size, "B": b, "T": t, "D": d, "dtype": args.dtype, "anchors_per_clip": m,
           "contrast_per_clip": n, "einsum_pass_tflop": pass_flops / 1e12}
    if args.compile_only:
        pass_s = pass_cpu = float("nan")
    else:
        pass_s, pass_cpu = einsum_pass_time(feats, args, args.steps)
    row["einsum_pass_s"], row["einsum_pass_cpu_s"] = pass_s, pass_cpu
    per_clip, visited = positive_tile_fraction(np.asarray(labels), args.anchor_tile, args.contrast_tile)
    row["positive_tiles"] = {"per_clip_mean": float(per_clip.mean()), "per_clip_max": float(per_clip.max()),
                             "visited": visited}
    for impl in args.impl.split(","):
        passes = {"tiled": 5, "sorted": 4 + visited, "dense": 3}[impl]
        fn = jax.jit(jax.value_and_grad(lambda f, y, impl=impl: stcl(
            f, y, temperature=args.temperature, anchor_tile=args.anchor_tile, contrast_tile=args.contrast_tile,
            implementation="dense" if impl == "dense" else "tiled", sort_by_label=impl == "sorted")))
        compiled = fn.lower(feats, labels).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit", args.dense_limit_gib * 2**30)
        res = {"temp_gib": temp / 2**30, "tflop": passes * pass_flops / 1e12}
        if args.compile_only:
            res["skipped"] = f"--compile_only: temporaries {temp / 2**30:.3f} GiB"
        elif impl == "dense" and temp > 0.9 * limit:
            res["skipped"] = f"needs {temp / 2**30:.1f} GiB of temporaries, limit {limit / 2**30:.1f} GiB"
        else:
            cpu = []
            seconds = time_fn(compiled, (feats, labels), args.steps, cpu)
            res.update(step_s=seconds, step_cpu_s=cpu[0], achieved_tflops=passes * pass_flops / seconds / 1e12,
                       vs_einsum_roofline=seconds / (passes * pass_s),
                       vs_einsum_roofline_cpu_time=cpu[0] / (passes * pass_cpu))
            if peak:
                res["vs_peak_roofline"] = seconds / (passes * pass_flops / (peak * 1e12))
            if "peak_bytes_in_use" in (device.memory_stats() or {}):
                res["device_peak_gib"] = device.memory_stats()["peak_bytes_in_use"] / 2**30
        row[impl] = res
    return row


def main(argv=None):
    args = parse_args(argv)
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, peak "
          f"{peak_tflops(args, device) or 'unknown'} TFLOP/s")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        if args.stats_only:
            labels = blob_labels(rng, args.batch, args.frames, size, args.classes, args.blob, args.ignore)
            per_clip, visited = positive_tile_fraction(labels, args.anchor_tile, args.contrast_tile)
            rows.append({"size": size, "per_clip_mean": float(per_clip.mean()), "visited": visited})
            print(f"{size}x{size}, tiles {args.anchor_tile}x{args.contrast_tile}: tile pairs holding a positive "
                  f"pair {per_clip.mean():.1%} per clip (max {per_clip.max():.1%}); batched positive pass visits "
                  f"{visited:.1%} -> einsum work {(4 + visited) / 5:.1%} of the unsorted tiled loss")
            continue
        row = run_size(size, args, rng, device)
        rows.append(row)
        print(f"\n{size}x{size}: B={row['B']} T={row['T']} D={row['D']} {row['dtype']}: {row['anchors_per_clip']} "
              f"anchors x {row['contrast_per_clip']} contrast per clip; one einsum pass = "
              f"{row['einsum_pass_tflop']:.4f} TFLOP, measured alone {row['einsum_pass_s'] * 1e3:.1f} ms "
              f"(process CPU {row['einsum_pass_cpu_s'] * 1e3:.1f} ms)")
        for impl in args.impl.split(","):
            r = row[impl]
            if "skipped" in r:
                print(f"  {impl:6s}: skipped ({r['skipped']})")
                continue
            extra = f", {r['vs_peak_roofline']:.2f}x the peak roofline" if "vs_peak_roofline" in r else ""
            dev = f", device peak {r['device_peak_gib']:.2f} GiB" if "device_peak_gib" in r else ""
            print(f"  {impl:6s}: fwd+bwd {r['step_s'] * 1e3:.1f} ms (process CPU {r['step_cpu_s'] * 1e3:.1f} ms), "
                  f"{r['tflop']:.4f} TFLOP -> {r['achieved_tflops']:.4f} TFLOP/s, {r['vs_einsum_roofline']:.2f}x "
                  f"the measured-einsum roofline (CPU time: {r['vs_einsum_roofline_cpu_time']:.2f}x){extra}; "
                  f"temporaries {r['temp_gib']:.3f} GiB{dev}")
        f = row["positive_tiles"]
        print(f"  label-sorted: tile pairs holding a positive pair {f['per_clip_mean']:.1%} per clip (max "
              f"{f['per_clip_max']:.1%}); the batched positive pass visits {f['visited']:.1%} -> einsum work "
              f"{(4 + f['visited']) / 5:.1%} of the unsorted tiled loss")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
