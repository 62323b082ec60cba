"""Train-step benchmark: our JAX step (Swin + UperNet + aux + STCL, AdamW) vs HF PyTorch UperNet-Swin.

    python bench/train_step.py                        # the issue's setting: Swin-L, 768x768, 8 images/device, bf16
    python bench/train_step.py --size micro --crop 64 --clips_per_device 1 --steps 3 --dtype float32   # CPU-sized

JAX: the real `stcl_jax.training.loop.make_train_step` (compiled once, donated state, data-parallel over the local
devices) on random clips of `--frames` frames (images per device = clips x frames), with the STCL term and without
it (the same work as the PyTorch step). PyTorch: `transformers.UperNetForSemanticSegmentation` with a Swin
backbone of the same size (random weights, no download), CE + 0.4 aux CE, AdamW, autocast to `--dtype`, eager
and `torch.compile`, on one device (cuda:0 when present).

Reported per variant: step time (median), img/s per device, peak memory, and MFU = XLA's FLOP count of the step
(`compiled.cost_analysis()`) / step time / the device's peak (`--peak_tflops`; known for H100/H200/A100 bf16).
The PyTorch MFU uses the FLOP count of our step without STCL (same architecture). `--profile DIR` writes a
jax.profiler trace of a few JAX steps (open with TensorBoard / Perfetto) to see what dominates the step.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))
import common  # noqa: E402

from stcl_jax.models import build_segmenter, model_config  # noqa: E402
from stcl_jax.training import inputs, loop, mesh as mesh_lib, optim, state as state_lib  # noqa: E402

# Dense bf16 peak TFLOP/s per device (vendor datasheets, SXM parts).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}
WINDOW = {"micro": 4, "tiny": 7, "small": 7, "base": 7, "large": 12}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large", choices=sorted(WINDOW))
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--clips_per_device", type=int, default=4)
    p.add_argument("--frames", type=int, default=2, help="frames per clip (query + references)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
    p.add_argument("--remat", action="store_true", help="rematerialise Swin blocks (less memory, more FLOPs)")
    p.add_argument("--torch", default="eager,compile", help="PyTorch variants to run: eager,compile or none")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="device peak; 0 = from the device name")
    p.add_argument("--profile", default="", help="directory for a jax.profiler trace of 3 steps")
    p.add_argument("--json", default="", help="write the results here")
    return p.parse_args(argv)


def peak_tflops(args, device_kind: str) -> float:
    if args.peak_tflops:
        return args.peak_tflops
    for name, value in PEAK_TFLOPS.items():
        if name in device_kind:
            return value if args.dtype == "bfloat16" else value / 2  # TF32 dense is half the bf16 rate
    return 0.0


def timed(fn, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------------------------------------- JAX
def jax_config(args, stcl: bool):
    c = common.base_config()
    c.global_batch_size = args.clips_per_device * jax.local_device_count()
    c.data.num_frames = args.frames
    c.data.crop_size = (args.crop, args.crop)
    c.loss.stcl_weight = 0.2 if stcl else 0.0
    c.model = model_config(args.size, window_size=WINDOW[args.size], dtype=args.dtype, remat=args.remat)
    c.lock()
    return c


def random_batch(spec: dict, num_classes: int, seed: int = 0) -> dict:
    """A batch of the step's input spec (stcl_jax.training.inputs.batch_spec) with random content."""
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


def bench_jax(args, stcl: bool) -> dict:
    c = jax_config(args, stcl)
    mesh = mesh_lib.make_mesh(jax.local_devices())
    model = build_segmenter(c.model)
    tx, schedule = optim.make_optimizer(c)
    crop, g, t = tuple(c.data.crop_size), c.global_batch_size, c.data.num_frames
    abstract, shardings = state_lib.abstract_state_and_shardings(model, tx, (1, *crop, 3), mesh, c.mesh)
    state = state_lib.create_train_state(model, tx, (1, *crop, 3), 0, shardings)
    shapes = inputs.batch_spec(c, g)
    t0 = time.perf_counter()
    step = loop.compile_train_step(loop.make_train_step(model, tx, schedule, c), abstract, shardings, shapes, mesh)
    compile_s = time.perf_counter() - t0
    memory = loop.log_memory(step)
    cost = step.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0
    batch = mesh_lib.global_batch(random_batch(shapes, c.model.num_classes), mesh)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], batch)
        jax.block_until_ready(metrics["loss"])

    times = timed(run, args.steps, args.warmup)
    if args.profile and stcl:
        jax.profiler.start_trace(args.profile)
        timed(run, 3, 0)
        jax.profiler.stop_trace()
    stats = jax.local_devices()[0].memory_stats() or {}
    n_dev = jax.local_device_count()
    return {"name": f"jax{'' if stcl else ' (no STCL)'}", "step_s": statistics.median(times),
            "images_per_device": args.clips_per_device * t, "compile_s": compile_s,
            "flops_per_device": flops / n_dev if flops else 0.0, "params_M": state_lib.param_count(
                holder["state"].params) / 1e6, "peak_bytes": stats.get("peak_bytes_in_use") or
            memory.get("peak_estimate_bytes", 0), "peak_source": "device" if stats else "compiled estimate"}


# --------------------------------------------------------------------------------------------------------- torch
def bench_torch(args, mode: str) -> dict:
    import torch
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    m = model_config(args.size, window_size=WINDOW[args.size])
    backbone = SwinConfig(embed_dim=m.swin.embed_dim, depths=list(m.swin.depths), num_heads=list(m.swin.num_heads),
                          window_size=m.swin.window_size, drop_path_rate=0.3,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = UperNetConfig(backbone_config=backbone, num_labels=m.num_classes, hidden_size=m.decoder.channels,
                        auxiliary_channels=m.aux.channels, use_auxiliary_head=True, auxiliary_loss_weight=0.4,
                        loss_ignore_index=255)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model = UperNetForSemanticSegmentation(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=7e-5, weight_decay=0.01)
    fwd = torch.compile(model) if mode == "compile" else model
    n = args.clips_per_device * args.frames
    x = torch.randn(n, 3, args.crop, args.crop, device=device)
    y = torch.randint(0, m.num_classes, (n, args.crop, args.crop), device=device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = fwd(pixel_values=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run()  # the first call compiles in "compile" mode
    first_s = time.perf_counter() - t0
    times = timed(run, args.steps, max(args.warmup - 1, 0))
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return {"name": f"torch {mode}", "step_s": statistics.median(times), "images_per_device": n,
            "compile_s": first_s, "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "peak_bytes": peak, "peak_source": "torch.cuda" if peak else "n/a on cpu"}


# ---------------------------------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    dev = jax.local_devices()[0]
    peak = peak_tflops(args, dev.device_kind)
    print(f"device: {jax.local_device_count()} x {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}; "
          f"Swin-{args.size} {args.crop}x{args.crop}, {args.clips_per_device} clips x {args.frames} frames per "
          f"device, {args.dtype}, median of {args.steps} steps", flush=True)
    results = [bench_jax(args, stcl=True), bench_jax(args, stcl=False)]
    for mode in [m for m in args.torch.split(",") if m and m != "none"]:
        results.append(bench_torch(args, mode))
    ref_flops = results[1]["flops_per_device"]
    for r in results:
        r["img_per_s_per_device"] = r["images_per_device"] / r["step_s"]
        flops = r.get("flops_per_device") or ref_flops
        r["mfu"] = flops / r["step_s"] / (peak * 1e12) if peak and flops else None
    print(f"{'variant':18s} {'step ms':>9s} {'img/s/dev':>10s} {'MFU':>7s} {'peak MiB':>9s} {'compile s':>10s} "
          f"{'params M':>9s}")
    for r in results:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['name']:18s} {1e3 * r['step_s']:9.1f} {r['img_per_s_per_device']:10.2f} {mfu:>7s} "
              f"{r['peak_bytes'] / 2 ** 20:9.0f} {r['compile_s']:10.1f} {r['params_M']:9.2f}")
    by_name = {r["name"]: r for r in results}
    if "torch compile" in by_name:
        ratio = by_name["jax"]["img_per_s_per_device"] / by_name["torch compile"]["img_per_s_per_device"]
        print(f"jax (with STCL) / torch.compile throughput: {ratio:.2f}x (goal >= 2x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": dev.device_kind, "peak_tflops": peak, "results": results}, f,
                      indent=1)
    return results


if __name__ == "__main__":
    main()
