"""The PyTorch peer of bench/train_step.py: Hugging Face UperNet + Swin, one training step, one mode per process.

    python bench/torch_step.py --mode eager          # Swin-L, 768x768, 8 images, bf16 autocast, fused AdamW
    python bench/torch_step.py --mode default        # torch.compile(mode="default")
    python bench/torch_step.py --mode max-autotune-no-cudagraphs
    python bench/torch_step.py --smoke --mode eager  # Swin-micro, 32x32, 2 images, float32 (CPU)

A strong baseline, as a PyTorch engineer would run it: `UperNetForSemanticSegmentation` with a `SwinConfig`
backbone of the same widths/depths/window as ours (random weights, offline), channels_last, cudnn.benchmark,
autocast to bf16, fused AdamW (lr 7e-5, weight decay 0.01), the loss HF computes (CE + 0.4 aux CE, ignore 255).
No STCL: compare with the JAX "no STCL" row for the same work. This script never imports JAX, so nothing else
holds device memory; the peak is `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()` (taken
once the model and optimizer exist, so it includes them). Timing: `--warmup` steps (the first compiles), then
`--steps` steps back to back with one `cuda.synchronize` at the end.
"""

from __future__ import annotations

import argparse
import time

import benchlib  # noqa: E402  (bench/ is sys.path[0] when a script of it runs)

# embed_dim, depths, num_heads, window (as stcl_jax.models.config.SIZES and the VSPW configs; kept here so this
# script does not import JAX), UperNet channels, aux channels.
SIZES = {
    "micro": (16, (1, 1, 2, 1), (1, 2, 2, 4), 4, 32, 16),
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 512, 256),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 512, 256),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 512, 256),
}
MODES = ("eager", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", default="eager", choices=MODES, help="eager, or a torch.compile mode")
    p.add_argument("--size", default="large", choices=sorted(SIZES))
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--images", type=int, default=8, help="images per step (4 clips x 2 frames)")
    p.add_argument("--num-classes", type=int, default=124)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps; the first one compiles")
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--flops", type=float, default=0.0,
                   help="analytic FLOPs of the same step (the JAX no-STCL figure) for an MFU; 0 = none")
    p.add_argument("--smoke", action="store_true", help="CPU size: Swin-micro, 32x32, 2 images, float32, 2 steps")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.crop, args.images, args.dtype, args.steps, args.warmup = "micro", 32, 2, "float32", 2, 1
    return args


def build_model(args):
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    dim, depths, heads, window, channels, aux = SIZES[args.size]
    backbone = SwinConfig(embed_dim=dim, depths=list(depths), num_heads=list(heads), window_size=window,
                          drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = UperNetConfig(backbone_config=backbone, num_labels=args.num_classes, hidden_size=channels,
                        auxiliary_channels=aux, use_auxiliary_head=True, auxiliary_loss_weight=0.4,
                        loss_ignore_index=255)
    return UperNetForSemanticSegmentation(cfg)


def bench(args) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = build_model(args).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=7e-5, weight_decay=0.01, fused=cuda)
    fwd = model if args.mode == "eager" else torch.compile(model, mode=args.mode)
    x = torch.randn(args.images, 3, args.crop, args.crop, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.num_classes, (args.images, args.crop, args.crop), device=device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = fwd(pixel_values=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    sync()
    first_s = time.perf_counter() - t0
    for _ in range(max(args.warmup - 1, 0)):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    step_s = (time.perf_counter() - t0) / args.steps
    kind = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = benchlib.peak_tflops(kind, args.dtype, args.peak_tflops)
    figures = {"first_step_s": first_s, "step_ms": 1e3 * step_s, "img_per_s_per_device": args.images / step_s,
               "images_per_device": args.images, "loss": float(loss.detach().float()),
               "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    notes = ["no STCL: compare with the JAX no-STCL row", "channels_last, cudnn.benchmark, fused AdamW" if cuda
             else "CPU: foreach AdamW (fused needs CUDA)"]
    if cuda:
        figures["device_peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        notes.append("device peak: n/a on CPU")
    if args.flops and peak:
        figures["mfu"] = args.flops / step_s / (peak * 1e12)
    name = f"torch train step ({args.mode})"
    return benchlib.record(name, f"torch {torch.__version__}", kind, figures, notes=notes)


def main(argv=None):
    args = parse_args(argv)
    try:
        records = [bench(args)]
    except Exception as e:  # noqa: BLE001 - a failed mode (OOM, compile error) is a result too
        records = [benchlib.record(f"torch train step ({args.mode})", "torch", "?", status=benchlib.error_status(e))]
    benchlib.print_records(records)
    benchlib.write_records(args.json, records)


if __name__ == "__main__":
    main()
