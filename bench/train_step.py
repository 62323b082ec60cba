"""Train-step benchmark of our JAX step (Swin + UperNet + aux + STCL, AdamW), one variant per process.

    python bench/train_step.py                       # Swin-L, 768x768, 4 clips x 2 frames, bf16: STCL on and off,
                                                     # each in its own process
    python bench/train_step.py --stcl off --profile-dir /tmp/prof    # one variant + a 3-step profile
    python bench/train_step.py --smoke               # the same code path at a CPU size (Swin-micro, 32x32)

The step is the real `stcl_jax.training.loop.make_train_step` (AOT-compiled once, donated state, data-parallel over
the local devices) on random clips. The config is configs/swin_l.py for `--size large` (base.base_config +
base.model otherwise), so the STCL placement is the training default unless `--stcl-feature` (->
model.projection.feature), `--stcl-pool` (-> loss.stcl_pool) or `--stcl-impl` (-> loss.stcl_implementation, where
the config has that field) say otherwise; `--attention-impl` sets model.attention_impl (e.g. "pallas").

Reported (one record per variant, see bench/benchlib.py): compile s, XLA `memory_analysis()` (arguments, outputs,
temporaries), the device's peak bytes in use (a fresh process per variant, so the peak is this variant's; n/a
on a CPU), img/s from `--steps` steps dispatched back to back with one block at the end of the timed window,
analytic FLOPs of the step (bench/flops.py: dot_general + conv on the jaxpr, scan bodies x trip count, the STCL
part found by the source file of each equation) and XLA's `cost_analysis()` FLOPs beside them (it counts each loop body once), MFU =
analytic FLOPs / (step time x the device's dense peak, `--peak-tflops` to override), and with `--profile-dir` a
3-step jax.profiler trace summarised by op category (bench/profile_summary.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import benchlib  # (bench/ is sys.path[0] when a script of it runs)

WINDOW = {"micro": 4, "tiny": 7, "small": 7, "base": 12, "large": 12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stcl", default="both", choices=["on", "off", "both"],
                   help="with the STCL term, without it, or both (each in its own process)")
    p.add_argument("--size", default="large", choices=sorted(WINDOW))
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--clips-per-device", "--clips_per_device", dest="clips_per_device", type=int, default=4)
    p.add_argument("--frames", type=int, default=2, help="frames per clip (query + references)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--steps", type=int, default=10, help="timed steps, dispatched back to back")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--remat", action="store_true", help="rematerialise Swin blocks (less memory, more FLOPs)")
    p.add_argument("--attention-impl", default="", choices=["", "xla", "cudnn", "pallas", "auto"],
                   help="model.attention_impl ('' = the config's); pallas: the fused kernels of stcl_jax.kernels")
    p.add_argument("--stcl-feature", default="", help="model.projection.feature (fused, stage1..stage4)")
    p.add_argument("--stcl-pool", type=int, default=0, help="loss.stcl_pool (0 = the config's)")
    p.add_argument("--stcl-impl", default="", help="loss.stcl_implementation (where the config has it)")
    p.add_argument("--peak-tflops", "--peak_tflops", dest="peak_tflops", type=float, default=0.0,
                   help="device peak; 0 = from the device kind")
    p.add_argument("--profile-dir", "--profile", dest="profile_dir", default="",
                   help="write a jax.profiler trace of 3 steps here and summarise it by op category")
    p.add_argument("--timeout", type=float, default=0, help="per-variant process timeout (s) with --stcl both")
    p.add_argument("--smoke", action="store_true",
                   help="CPU size: Swin-micro with one block per stage, 32x32, 1 clip, float32, 2 steps")
    p.add_argument("--json", default="", help="write the result records here")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.crop, args.clips_per_device, args.dtype = "micro", 32, 1, "float32"
        args.steps, args.warmup = 2, 1
    return args


# ------------------------------------------------------------------------------------------------------ config
def make_config(args, stcl: bool):
    """The training config of `--size` at the bench's batch and crop, with the STCL overrides applied."""
    import jax

    from stcl_jax.configs import base, recipes

    if args.size == "large":
        c = recipes.swin("large", 12)
    else:
        c = base.base_config()
        # --smoke: one block per stage (the smallest Swin with every code path) to keep CPU compilation short
        depths = {"depths": (1, 1, 1, 1)} if args.smoke else {}
        c.model = base.model(args.size, window_size=WINDOW[args.size], **depths)
    c.global_batch_size = args.clips_per_device * jax.local_device_count()
    c.data.num_frames = args.frames
    c.data.crop_size = (args.crop, args.crop)
    if not stcl:
        c.loss.stcl_weight = 0.0
    apply_stcl_overrides(c, args)
    c.model.unlock()
    c.model.dtype = args.dtype
    c.model.remat = args.remat
    if args.attention_impl:
        c.model.attention_impl = args.attention_impl
    c.lock()
    return c


def apply_stcl_overrides(c, args) -> None:
    """--stcl-feature / --stcl-pool / --stcl-impl onto an unlocked config; a clear error for a missing field."""
    from stcl_jax.models import config as model_config_lib

    if args.stcl_feature:
        c.model.unlock()
        c.model.projection.feature = args.stcl_feature
        c.model.projection.stride = model_config_lib.projection_stride(args.stcl_feature, c.model.swin.patch_size)
        model_config_lib.validate(c.model)
    if args.stcl_pool:
        c.loss.stcl_pool = args.stcl_pool
    if args.stcl_impl:
        if "stcl_implementation" not in c.loss:
            raise SystemExit(f"--stcl-impl {args.stcl_impl!r}: this version's config has no "
                             f"loss.stcl_implementation field (fields: {sorted(c.loss.keys())})")
        c.loss.stcl_implementation = args.stcl_impl


def random_batch(spec: dict, num_classes: int, seed: int = 0) -> dict:
    """A batch of the step's input spec (stcl_jax.training.inputs.batch_spec) with random content."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    for k, (shape, dtype) in spec.items():
        if k == "label":
            out[k] = rng.integers(0, num_classes, size=shape).astype(dtype)
        elif k == "image_hw":
            out[k] = np.full(shape, 2 ** 30, np.int32)            # the whole crop is valid (no padding)
        elif k == "stcl":
            out[k] = np.ones(shape, bool)
        elif np.dtype(dtype) == np.uint8:
            out[k] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            out[k] = rng.normal(size=shape).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------- one variant
STCL_SOURCES = r"stcl_jax/(losses/(stcl|contrast)|kernels/stcl_contrast)"  # the STCL loss (any implementation)


def analytic_flops(model, tx, schedule, config, abstract_state, abstract_batch) -> dict:
    """Analytic FLOPs of the step (jaxpr only, nothing run), with the STCL loss's part found by source file."""
    import flops
    from stcl_jax.training import loop

    count = flops.count_flops(loop.make_train_step(model, tx, schedule, config), abstract_state, abstract_batch,
                              tag=flops.source_tag({"stcl": STCL_SOURCES}))
    return {"analytic_flops": count.total, "analytic_stcl_flops": count.by_tag["stcl"],
            "unknown_trip_loops": count.unknown_trip_loops}


def time_steps(step, state, batch, steps: int, warmup: int):
    """(seconds for `steps` steps dispatched back to back, the final state); one block per window."""
    import jax

    for _ in range(warmup):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - t0, state, metrics


def profile_steps(step, state, batch, trace_dir: str, steps: int = 3) -> dict:
    import jax

    import profile_summary

    jax.profiler.start_trace(trace_dir)
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    jax.profiler.stop_trace()
    hlo = step.as_text()
    with open(os.path.join(trace_dir, "train_step.hlo.txt"), "w") as f:
        f.write(hlo)
    summary = profile_summary.summarize(trace_dir, hlo, steps=steps)
    return summary


def bench_variant(args, stcl: bool) -> dict:
    import jax

    from stcl_jax.models import build_segmenter
    from stcl_jax.training import checkpoint as ckpt_lib
    from stcl_jax.training import inputs, loop, mesh as mesh_lib, optim, state as state_lib

    c = make_config(args, stcl)
    dev = jax.local_devices()[0]
    n_dev = jax.local_device_count()
    mesh = mesh_lib.make_mesh(jax.local_devices())
    model = build_segmenter(c.model)
    tx, schedule = optim.make_optimizer(c)
    crop = tuple(c.data.crop_size)
    t0 = time.perf_counter()
    abstract, shardings = state_lib.abstract_state_and_shardings(model, tx, (1, *crop, 3), mesh, c.mesh)
    state = state_lib.create_train_state(model, tx, (1, *crop, 3), 0, shardings)
    init_s = time.perf_counter() - t0
    shapes = inputs.batch_spec(c, c.global_batch_size)
    step_fn = loop.make_train_step(model, tx, schedule, c)
    t0 = time.perf_counter()
    step = loop.compile_train_step(step_fn, abstract, shardings, shapes, mesh)
    compile_s = time.perf_counter() - t0
    memory = loop.log_memory(step)
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    abstract_batch = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in shapes.items()}
    t0 = time.perf_counter()
    counted = analytic_flops(model, tx, schedule, c, ckpt_lib.abstract_with_shardings(abstract, shardings),
                             abstract_batch)
    flop_count_s = time.perf_counter() - t0
    batch = mesh_lib.global_batch(random_batch(shapes, c.model.num_classes), mesh)
    elapsed, state, metrics = time_steps(step, state, batch, args.steps, args.warmup)
    step_s = elapsed / args.steps
    images = args.clips_per_device * args.frames
    peak = benchlib.peak_tflops(dev.device_kind, args.dtype, args.peak_tflops)
    per_device = counted["analytic_flops"] / n_dev
    figures = {
        "init_s": init_s, "compile_s": compile_s, "flop_count_s": flop_count_s, "step_ms": 1e3 * step_s, "img_per_s_per_device": images / step_s,
        "images_per_device": images, "loss": float(metrics["loss"]),
        "analytic_tflop_per_device": per_device / 1e12,
        "analytic_stcl_tflop_per_device": counted["analytic_stcl_flops"] / n_dev / 1e12,
        "xla_cost_analysis_tflop": float(cost.get("flops", 0.0)) / 1e12,
        "unknown_trip_loops": counted["unknown_trip_loops"],
        "peak_tflops_used": peak, "mfu": per_device / step_s / (peak * 1e12) if peak else None,
        "mfu_xla_cost": float(cost.get("flops", 0.0)) / step_s / (peak * 1e12) if peak else None,
        "params_M": state_lib.param_count(state.params) / 1e6,
        "stcl_stride": c.model.projection.stride * c.loss.stcl_pool if stcl else 0,
        "projection_feature": c.model.projection.feature, "stcl_pool": c.loss.stcl_pool,
        **{f"memory_analysis_{k.replace('_size_in_bytes', '').replace('_bytes', '')}_gib": v / 2 ** 30
           for k, v in memory.items()},
    }
    notes = []
    stats = dev.memory_stats()
    if stats and stats.get("peak_bytes_in_use"):
        figures["device_peak_gib"] = stats["peak_bytes_in_use"] / 2 ** 30
    else:
        notes.append(f"device peak: n/a on {dev.platform} (memory_stats() has no peak_bytes_in_use)")
    if not peak:
        notes.append(f"MFU: n/a (no dense peak known for {dev.device_kind!r}; pass --peak-tflops)")
    if args.profile_dir:  # a failed profile (e.g. a jax without ProfileData) must not lose the figures above
        t0 = time.perf_counter()
        try:
            figures["profile"] = profile_steps(step, state, batch, args.profile_dir)
        except Exception as e:  # noqa: BLE001
            notes.append(f"profile failed: {benchlib.error_status(e)}")
        figures["profile_s"] = time.perf_counter() - t0
    name = f"jax train step ({'STCL stride %d' % figures['stcl_stride'] if stcl else 'no STCL'})"
    return benchlib.record(name, "jax", f"{n_dev} x {dev.device_kind}", figures, notes=notes)


# ----------------------------------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    if args.stcl == "both":  # each variant in a fresh process: its own device memory, peak and allocator state
        argv = list(sys.argv[1:] if argv is None else argv)
        base = [a for a in _strip(argv, ("--stcl", "--json", "--profile-dir", "--profile", "--timeout"))]
        records = []
        for variant in ("on", "off"):
            records += benchlib.run_isolated(__file__, [*base, "--stcl", variant], args.timeout)
    else:
        import jax

        print(f"jax {jax.__version__}, {jax.local_device_count()} x {jax.local_devices()[0].device_kind}; "
              f"Swin-{args.size} {args.crop}x{args.crop}, {args.clips_per_device} clips x {args.frames} frames per "
              f"device, {args.dtype}, STCL {args.stcl}, {args.steps} steps back to back", flush=True)
        try:
            records = [bench_variant(args, args.stcl == "on")]
        except SystemExit:
            raise
        except Exception as e:  # noqa: BLE001 - a failed variant is a result too (e.g. out of memory)
            records = [benchlib.record(f"jax train step (STCL {args.stcl})", "jax", "?",
                                       status=benchlib.error_status(e))]
    benchlib.print_records(records)
    benchlib.write_records(args.json, records)
    return records


def _strip(argv, options):
    """argv without the given options (and their values)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in options:
            skip = True
        elif not any(a.startswith(o + "=") for o in options):
            out.append(a)
    return out


if __name__ == "__main__":
    main()
