"""STCL loss benchmark: forward+backward time, FLOPs and memory of each implementation against the peak roofline.

    python bench/stcl_loss.py                      # Swin-L at a 768 crop: B=4 clips, T=2, D=512, bf16, 96x96
                                                   # (stride 8) and 192x192 (stride 4); tiled, rows, pallas,
                                                   # dense
    python bench/stcl_loss.py --smoke --json OUT/stcl.json           # tiny sizes, a few seconds on a CPU
    python bench/stcl_loss.py --sizes 24,48 --batch 2 --dim 64 --dtype float32 --steps 7   # CPU-sized

Per size: `jax.value_and_grad` of `spatial_temporal_consistency_loss` (jitted once) on random features with
blob-shaped label maps (smooth random fields -> argmax over `--classes`, the reference frames shifted copies of
the query frame, `--ignore` of the pixels void), as VSPW maps look at feature resolution.

Reported per implementation: median step time, the analytic GEMM FLOPs (`stcl.stcl_flops`: "rows" 3 passes of
2*B*M*N*D, "tiled" 5, "dense" 3, with M = h*w anchors and N = T*h*w contrast pixels per clip; XLA's cost analysis
counts a scan body once, so it is not used), the achieved TFLOP/s, the ratio of the step time to the time those
FLOPs take at `--peak-tflops` (default from the device kind: H100/H200 989, A100 312, bf16 dense; "n/a" on a
CPU), the compiled temporaries (`memory_analysis()`) and, on GPUs, the process's peak bytes in use so far (not
reset between implementations). Also one tiled einsum pass alone (a scan of `einsum + sum` over the contrast
tiles), the rate the einsums reach on this device. The dense baseline runs only where its compiled temporaries
fit (the GPU's memory, or `--dense_limit_gib` elsewhere).

"sorted" (not in the default list) is "tiled" with `sort_by_label=True`: the positive pass visits only the
contrast tiles whose labels overlap the anchor tile's; its work is 4 + (visited fraction) passes, printed for the
blob maps. "pallas" is the Pallas kernels (`stcl_jax/kernels/stcl_contrast.py`; Triton on a GPU, interpret mode on
a CPU), whose second pass skips the tile pairs without a same-label pair: its work is 4 + 2 f passes with f that
fraction of the blob maps' (kernel-tile) pairs, small since it sorts the pixels by label (its default);
"pallas_unsorted" (`sort_by_label=False`) keeps the row-major order (f near 1 on these maps).
`--pallas_tiles 64x64,128x64` (anchor x contrast tiles, powers of two) measures each pallas variant at those tiles
too (named e.g. "pallas@128x64"). An implementation that fails to compile or run is recorded with its error and
the others go on. `--json PATH` writes a list of result dicts, one per (size, implementation), rewritten after
each result (a section cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from stcl_jax.kernels import stcl_contrast
from stcl_jax.losses import spatial_temporal_consistency_loss as stcl
from stcl_jax.losses.stcl import balanced_tile, stcl_flops  # the tile sizes the loss uses, its GEMM FLOPs

# Dense peak TFLOP/s per device for bf16 inputs (vendor datasheets, SXM parts); fp32 here means TF32 on GPUs.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4, help="clips B")
    p.add_argument("--frames", type=int, default=2, help="frames per clip T (query + references)")
    p.add_argument("--sizes", default="96,192", help="comma-separated feature sizes h (= w)")
    p.add_argument("--crop", type=int, default=768, help="image crop the sizes come from (labels the stride)")
    p.add_argument("--dim", type=int, default=512, help="embedding dimension D")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--classes", type=int, default=124, help="label vocabulary of the blob maps")
    p.add_argument("--blob", type=int, default=12, help="blob scale in pixels (smaller = more segments)")
    p.add_argument("--ignore", type=float, default=0.05, help="fraction of void pixels")
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--anchor_tile", type=int, default=0, help="0 = each implementation's default")
    p.add_argument("--contrast_tile", type=int, default=2048, help="tiled only")
    p.add_argument("--impl", default="tiled,rows,pallas,dense",
                   help="implementations: tiled,rows,pallas,dense,sorted,pallas_unsorted")
    p.add_argument("--pallas_tiles", default="", help="extra pallas tiles to measure, e.g. 64x64,128x64")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--dense_limit_gib", type=float, default=8.0, help="skip dense above this (non-GPU backends)")
    p.add_argument("--peak-tflops", "--peak_tflops", dest="peak_tflops", type=float, default=0.0,
                   help="device peak TFLOP/s; 0 = from the device kind (none on a CPU)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for a CPU check: --sizes 8,12 --batch 2 --dim 32 float32, 2 steps")
    p.add_argument("--compile_only", action="store_true", help="compile and report memory, run nothing")
    p.add_argument("--stats_only", action="store_true", help="only the label-sorted tile statistics (no JAX)")
    p.add_argument("--json", default="", metavar="PATH", help="write the list of result dicts here")
    args = p.parse_args(argv)
    if args.smoke:
        args.sizes, args.batch, args.dim, args.dtype, args.steps = "8,12", 2, 32, "float32", 2
        args.classes, args.blob = 6, 4
    return args


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


def pallas_tile_fraction(labels, tiles, sort):
    """Mean over clips of the fraction of (anchor tile, contrast tile) pairs of the Pallas kernel holding a
    same-label pair (its pass 2 visits those): per-tile label-presence bitmaps, pixels in row-major order or sorted
    by label. Self pairs are counted, so this bounds the visited fraction from above."""
    b, t = labels.shape[:2]
    classes = int(labels[labels != 255].max(initial=0)) + 1
    ta, tc = (min(tile, 1 << (length - 1).bit_length()) for tile, length in zip(tiles, (labels[0, 0].size,
                                                                                   labels[0].size)))

    def presence(x, tile):
        x = np.sort(x, axis=1) if sort else x  # 255 (void) sorts last, as the loss's sort puts -1 last
        x = np.pad(x, ((0, 0), (0, -x.shape[1] % tile)), constant_values=255).reshape(b, -1, tile)
        onehot = np.zeros(x.shape[:2] + (classes + 1,), np.float32)
        np.put_along_axis(onehot, np.minimum(x, classes), 1.0, axis=2)
        return onehot[..., :classes]

    a, c = presence(labels[:, 0].reshape(b, -1), ta), presence(labels.reshape(b, -1), tc)
    return float(np.mean(np.einsum("bik,bjk->bij", a, c) > 0))


@contextlib.contextmanager
def kernel_tiles(tiles):
    """Every back end of the Pallas kernels on `tiles` (None: their defaults) while a step is traced."""
    saved = dict(stcl_contrast.TILES)
    if tiles:
        stcl_contrast.TILES.update({k: tiles for k in saved})
    try:
        yield
    finally:
        stcl_contrast.TILES.update(saved)


def default_pallas_tiles(device):
    return stcl_contrast.TILES["mosaic" if device.platform == "tpu" else "triton"]


def pallas_variants(impls, args):
    """(name, implementation, tiles) of every pallas variant of `impls` at the default and `--pallas_tiles`."""
    extra = [tuple(int(v) for v in t.split("x")) for t in args.pallas_tiles.split(",") if t]
    return [(impl, impl, None) for impl in impls] + [
        (f"{impl}@{ta}x{tc}", impl, (ta, tc)) for impl in impls if impl.startswith("pallas") for ta, tc in extra]


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


def tiled_anchor_tile(args):
    return args.anchor_tile or 1024  # the tiled loss's default


def einsum_pass_time(feats, args, steps):
    """One tiled einsum pass alone: anchors x contrast tiles, each reduced so XLA cannot drop it."""
    b, t, h, w, d = feats.shape
    m, n = h * w, t * h * w
    ta, tc = balanced_tile(m, tiled_anchor_tile(args)), balanced_tile(n, args.contrast_tile)
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
    """`--peak-tflops`, else the datasheet figure of a known GPU; 0 (unknown) on a CPU or another device."""
    if args.peak_tflops:
        return args.peak_tflops
    if device.platform == "cpu":
        return 0.0
    return next((v for k, v in PEAK_TFLOPS.items() if k in device.device_kind), 0.0)


def loss_step(impl, args):
    """The jitted value_and_grad of one implementation ("sorted" = tiled with sort_by_label, "pallas_unsorted" =
    pallas without it)."""
    base, sort = {"sorted": ("tiled", True), "pallas_unsorted": ("pallas", False)}.get(impl, (impl, None))
    kw = {"implementation": base, "sort_by_label": sort,
          "anchor_tile": args.anchor_tile or None, "contrast_tile": args.contrast_tile}
    return jax.jit(jax.value_and_grad(lambda f, y: stcl(f, y, temperature=args.temperature, **kw)))


def run_impl(impl, feats, labels, base, flops, args, device, name=None, tiles=None):
    """One result dict: compile, check memory, time; `base` holds the size's fields. A failure (compile, run,
    out of memory) is recorded as `skipped: error: ...`: one implementation must not lose the others' figures."""
    res = dict(base, implementation=name or impl, tflop=flops / 1e12, peak_tflops=peak_tflops(args, device) or None,
               temp_gib=None)
    if impl.startswith("pallas"):
        res["pallas_tiles"] = list(tiles or default_pallas_tiles(device))
    try:
        return measure(impl, feats, labels, res, flops, args, device, tiles)
    except Exception as e:  # noqa: BLE001 - recorded, and the next implementation runs
        return dict(res, skipped=f"error: {type(e).__name__}: {e}"[:600])


def measure(impl, feats, labels, res, flops, args, device, tiles):
    peak = res["peak_tflops"]
    with kernel_tiles(tiles):
        compiled = loss_step(impl, args).lower(feats, labels).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    limit = (device.memory_stats() or {}).get("bytes_limit", args.dense_limit_gib * 2**30)
    res["temp_gib"] = temp / 2**30
    if args.compile_only:
        return dict(res, skipped="--compile_only")
    if impl == "dense" and temp > 0.9 * limit:
        return dict(res, skipped=f"needs {temp / 2**30:.1f} GiB of temporaries, limit {limit / 2**30:.1f} GiB")
    cpu = []
    seconds = time_fn(compiled, (feats, labels), args.steps, cpu)
    res.update(step_s=seconds, step_cpu_s=cpu[0], achieved_tflops=flops / seconds / 1e12,
               vs_peak_roofline=seconds / (flops / (peak * 1e12)) if peak else None,
               vs_einsum_roofline=seconds * res["einsum_pass_tflop"] * 1e12 / (flops * res["einsum_pass_s"]))
    if "peak_bytes_in_use" in (device.memory_stats() or {}):
        res["process_peak_gib"] = device.memory_stats()["peak_bytes_in_use"] / 2**30
    return res


def run_size(size, args, rng, device, done=()):
    """The result dicts of every `--impl` at feature size `size` x `size`; `done`: those of the earlier sizes
    (written with them to `--json` after each result)."""
    b, t, d = args.batch, args.frames, args.dim
    m, n = size * size, t * size * size
    labels = jnp.asarray(blob_labels(rng, b, t, size, args.classes, args.blob, args.ignore))
    shape, dtype = (b, t, size, size, d), jnp.dtype(args.dtype)
    feats = (jax.ShapeDtypeStruct(shape, dtype) if args.compile_only  # abstract: nothing is allocated
             else jax.random.normal(jax.random.PRNGKey(size), shape, dtype))
    pass_s, pass_cpu = ((float("nan"),) * 2 if args.compile_only else einsum_pass_time(feats, args, args.steps))
    per_clip, visited = positive_tile_fraction(np.asarray(labels), tiled_anchor_tile(args), args.contrast_tile)
    base = {"size": size, "stride": args.crop / size, "B": b, "T": t, "D": d, "dtype": args.dtype,
            "anchors_per_clip": m, "contrast_per_clip": n, "device": device.device_kind,
            "einsum_pass_tflop": stcl_flops("rows", b, m, n, d) / 3e12, "einsum_pass_s": pass_s,
            "einsum_pass_cpu_s": pass_cpu, "positive_tiles_visited": visited}
    results = []
    for name, impl, tiles in pallas_variants(args.impl.split(","), args):
        extra = {}
        if impl.startswith("pallas"):
            fraction = pallas_tile_fraction(np.asarray(labels), tiles or default_pallas_tiles(device),
                                            impl == "pallas")
            flops, extra = stcl_flops("pallas", b, m, n, d, positive_fraction=fraction), {"pallas_f": fraction}
        else:
            flops = (stcl_flops("tiled", b, m, n, d, positive_fraction=visited) if impl == "sorted"
                     else stcl_flops(impl, b, m, n, d))
        results.append(dict(run_impl(impl, feats, labels, base, flops, args, device, name=name, tiles=tiles),
                            **extra))
        if args.json:  # rewritten after each result: a section cut short keeps what it measured
            with open(args.json, "w") as fh:
                json.dump(done + results, fh, indent=1)
    return results, per_clip


def describe(r):
    """One printed line per result dict."""
    if "skipped" in r:
        temp = "" if r["temp_gib"] is None else f"; temporaries {r['temp_gib']:.3f} GiB"
        return f"  {r['implementation']:6s}: skipped ({r['skipped']}){temp}"
    visited = f"; tile pairs with a positive pair f = {r['pallas_f']:.1%}" if "pallas_f" in r else ""
    peak = f"{r['vs_peak_roofline']:.2f}x" if r["vs_peak_roofline"] else "n/a"
    dev = f", process peak {r['process_peak_gib']:.2f} GiB" if "process_peak_gib" in r else ""
    return (f"  {r['implementation']:6s}: fwd+bwd {r['step_s'] * 1e3:.1f} ms (process CPU "
            f"{r['step_cpu_s'] * 1e3:.1f} ms), {r['tflop']:.4f} TFLOP -> {r['achieved_tflops']:.4f} TFLOP/s, "
            f"{peak} the peak roofline, {r['vs_einsum_roofline']:.2f}x the measured-einsum roofline; "
            f"temporaries {r['temp_gib']:.3f} GiB{dev}{visited}")


def main(argv=None):
    args = parse_args(argv)
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, peak "
          f"{peak_tflops(args, device) or 'n/a'} TFLOP/s")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        if args.stats_only:
            labels = blob_labels(rng, args.batch, args.frames, size, args.classes, args.blob, args.ignore)
            per_clip, visited = positive_tile_fraction(labels, tiled_anchor_tile(args), args.contrast_tile)
            rows.append({"size": size, "per_clip_mean": float(per_clip.mean()), "visited": visited})
            print(f"{size}x{size}, tiles {tiled_anchor_tile(args)}x{args.contrast_tile}: tile pairs holding a "
                  f"positive pair {per_clip.mean():.1%} per clip (max {per_clip.max():.1%}); batched positive pass "
                  f"visits {visited:.1%} -> einsum work {(4 + visited) / 5:.1%} of the unsorted tiled loss")
            tiles = stcl_contrast.TILES["triton"]
            f, f_sorted = (pallas_tile_fraction(labels, tiles, sort) for sort in (False, True))
            rows[-1].update(pallas_f=f, pallas_sorted_f=f_sorted)
            print(f"  pallas, tiles {tiles[0]}x{tiles[1]}: tile pairs with a positive pair f = {f:.1%} (row-major), "
                  f"{f_sorted:.1%} (sorted) -> 4 + 2 f = {4 + 2 * f:.2f} / {4 + 2 * f_sorted:.2f} GEMM passes")
            continue
        results, per_clip = run_size(size, args, rng, device, done=rows)
        rows.extend(results)
        r = results[0]
        print(f"\n{size}x{size} (stride {r['stride']:g} of a {args.crop} crop): B={r['B']} T={r['T']} D={r['D']} "
              f"{r['dtype']}: {r['anchors_per_clip']} anchors x {r['contrast_per_clip']} contrast per clip; one "
              f"einsum pass = {r['einsum_pass_tflop']:.4f} TFLOP, measured alone {r['einsum_pass_s'] * 1e3:.1f} ms "
              f"(process CPU {r['einsum_pass_cpu_s'] * 1e3:.1f} ms)")
        for r in results:
            print(describe(r))
        print(f"  label-sorted: tile pairs holding a positive pair {per_clip.mean():.1%} per clip (max "
              f"{per_clip.max():.1%}); the batched positive pass visits {r['positive_tiles_visited']:.1%} -> "
              f"einsum work {(4 + r['positive_tiles_visited']) / 5:.1%} of the unsorted tiled loss")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
