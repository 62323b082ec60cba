"""Forward+backward step of Swin UperNet: ours (JAX/Flax) vs Hugging Face UperNet-Swin (PyTorch eager, compile).

    python bench/model_step.py                                   # GPU defaults: Swin-L, 768x768, batch 8, bf16
    python bench/model_step.py --size tiny --image-size 128 --batch 2 --iters 3 --warmup 1   # a CPU smoke run

The step is the training forward (BatchNorm in batch mode, drop path, dropout) plus the gradient of
CE(logits) + 0.4 * CE(aux logits) w.r.t. all parameters, on random inputs and labels, with no optimizer
update, in both frameworks. Both models are built from the same `model_config` (weights random). bf16 means
bf16 compute with fp32 parameters: Flax `dtype=bfloat16`, PyTorch `torch.autocast(bfloat16)`. Timing: `--warmup`
untimed steps (the first compiles), then `--iters` steps; JAX dispatches them asynchronously and blocks on the
last one, PyTorch synchronises CUDA at the end. Each framework runs in its own process (this script re-runs itself
with one `--frameworks` entry), so JAX's preallocated device memory never starves torch and each peak is its own.
Peak memory is the device's (JAX `memory_stats()`, torch `max_memory_allocated` after `reset_peak_memory_stats`)
where the backend reports it, otherwise "n/a". PyTorch runs channels_last with cudnn.benchmark on a GPU. Prints a
table and writes `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stcl_jax.models import build_segmenter, model_config

AUX_WEIGHT = 0.4


def jax_step_benchmark(cfg, args) -> dict:
    model = build_segmenter(cfg)
    rng = np.random.RandomState(0)
    images = jnp.asarray(rng.randn(args.batch, args.image_size, args.image_size, 3).astype(np.float32))
    labels = jnp.asarray(rng.randint(0, cfg.num_classes, (args.batch, args.image_size, args.image_size)))
    key = jax.random.key(0)
    variables = jax.jit(model.init)({"params": key}, images[:1])

    def loss_fn(params, batch_stats, images, labels, key):
        k1, k2 = jax.random.split(key)
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, images, train=True,
                                   rngs={"dropout": k1, "drop_path": k2}, mutable=["batch_stats"])
        ce = optax.softmax_cross_entropy_with_integer_labels
        loss = ce(out["logits"], labels).mean() + AUX_WEIGHT * ce(out["aux_logits"], labels).mean()
        return loss, updates["batch_stats"]

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    t0 = time.perf_counter()
    compiled = step.lower(variables["params"], variables["batch_stats"], images, labels, key).compile()
    compile_s = time.perf_counter() - t0
    result = None
    for i in range(args.warmup):
        result = compiled(variables["params"], variables["batch_stats"], images, labels, jax.random.fold_in(key, i))
    jax.block_until_ready(result)
    t0 = time.perf_counter()
    for i in range(args.iters):
        result = compiled(variables["params"], variables["batch_stats"], images, labels, jax.random.fold_in(key, i))
    jax.block_until_ready(result)
    elapsed = time.perf_counter() - t0
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {"framework": "jax", "compile_s": compile_s, "step_s": elapsed / args.iters,
            "img_per_s": args.batch * args.iters / elapsed, "peak_mem_gib": peak / 2**30 if peak else None,
            "loss": float(result[0][0])}


def hf_model(cfg):
    """HF UperNetForSemanticSegmentation with the same architecture as `cfg` (random weights, offline)."""
    import transformers

    s = cfg.swin
    backbone = transformers.SwinConfig(
        embed_dim=s.embed_dim, depths=list(s.depths), num_heads=list(s.num_heads), window_size=s.window_size,
        patch_size=s.patch_size, mlp_ratio=s.mlp_ratio, drop_path_rate=s.drop_path_rate,
        out_features=["stage1", "stage2", "stage3", "stage4"])
    config = transformers.UperNetConfig(
        backbone_config=backbone, hidden_size=cfg.decoder.channels, pool_scales=list(cfg.decoder.pool_scales),
        auxiliary_channels=cfg.aux.channels, auxiliary_in_channels=None, auxiliary_loss_weight=AUX_WEIGHT,
        num_labels=cfg.num_classes)
    return transformers.UperNetForSemanticSegmentation(config)


def torch_step_benchmark(cfg, args, compiled: bool) -> dict:
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    model = hf_model(cfg).to(device, memory_format=torch.channels_last).train()
    rng = np.random.RandomState(0)
    images = torch.from_numpy(rng.randn(args.batch, 3, args.image_size, args.image_size).astype(np.float32))
    labels = torch.from_numpy(rng.randint(0, cfg.num_classes, (args.batch, args.image_size, args.image_size)))
    images, labels = images.to(device).contiguous(memory_format=torch.channels_last), labels.to(device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32

    def step(images, labels):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model(pixel_values=images, labels=labels).loss
        loss.backward()
        return loss

    fn = torch.compile(step) if compiled else step
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(max(args.warmup, 1)):
        model.zero_grad(set_to_none=True)
        loss = fn(images, labels)
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.iters):
        model.zero_grad(set_to_none=True)
        loss = fn(images, labels)
    sync()
    elapsed = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"framework": "torch-compile" if compiled else "torch-eager", "compile_s": warmup_s,
            "step_s": elapsed / args.iters, "img_per_s": args.batch * args.iters / elapsed, "peak_mem_gib": peak,
            "loss": float(loss.detach().float())}


def run_in_own_process(framework: str, argv) -> dict:
    """This script with `--frameworks framework` in a fresh process; its one result (or the failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keep, skip = [], False
    for a in argv:  # drop --frameworks / --json and their values
        if skip:
            skip = False
        elif a in ("--frameworks", "--json"):
            skip = True
        elif not a.startswith(("--frameworks=", "--json=")):
            keep.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *keep, "--frameworks", framework,
                               "--json", out])
        if not os.path.exists(out):
            return {"framework": framework, "error": f"exit code {proc.returncode}, no result"}
        with open(out) as f:
            return json.load(f)["results"][0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large", help="micro | tiny | small | base | large")
    p.add_argument("--window-size", type=int, default=12)
    p.add_argument("--image-size", type=int, default=768)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--num-classes", type=int, default=124)
    p.add_argument("--remat", action="store_true", help="rematerialise Swin blocks (JAX)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--frameworks", default="jax,torch-eager,torch-compile")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    cfg = model_config(args.size, window_size=args.window_size, num_classes=args.num_classes, dtype=args.dtype,
                       remat=args.remat)
    frameworks = args.frameworks.split(",")
    # Only a JAX-only process may touch a JAX device (JAX preallocates most of a GPU on first use).
    backend = f"{jax.default_backend()} ({jax.devices()[0].device_kind})" if frameworks == ["jax"] else "-"
    print(f"backend {backend}; Swin-{cfg.size} UperNet window {args.window_size}, "
          f"{args.image_size}x{args.image_size}, batch {args.batch}, {args.dtype}, "
          f"remat {args.remat}, warmup {args.warmup}, iters {args.iters}", flush=True)
    results = []
    for fw in frameworks:
        if len(frameworks) > 1:
            results.append(run_in_own_process(fw, argv))
            print(json.dumps(results[-1]), flush=True)
            continue
        try:
            if fw == "jax":
                r = jax_step_benchmark(cfg, args)
            elif fw in ("torch-eager", "torch-compile"):
                r = torch_step_benchmark(cfg, args, compiled=fw == "torch-compile")
            else:
                raise ValueError(f"--frameworks: unknown {fw!r}")
        except Exception as e:  # noqa: BLE001 - record the failure and go on with the other frameworks
            r = {"framework": fw, "error": f"{type(e).__name__}: {e}"[:500]}
        results.append(r)
        print(json.dumps(r), flush=True)
    by = {r["framework"]: r for r in results if "img_per_s" in r}
    print(f"\n| framework | compile/warmup s | step s | img/s | peak device GiB |\n|---|---|---|---|---|")
    for r in results:
        if "img_per_s" in r:
            mem = f"{r['peak_mem_gib']:.2f}" if r["peak_mem_gib"] else "n/a"
            print(f"| {r['framework']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['img_per_s']:.2f} | {mem} |")
        else:
            print(f"| {r['framework']} | failed: {r['error']} | | | |")
    for ref in ("torch-eager", "torch-compile"):
        if "jax" in by and ref in by:
            print(f"jax / {ref} throughput: {by['jax']['img_per_s'] / by[ref]['img_per_s']:.2f}x")
    print(f"host max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (this process)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "backend": backend, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
