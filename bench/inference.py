"""Inference benchmark: Swin + UperNet sliding-window segmentation of 480p frames, JAX vs HF PyTorch, same weights.

    python bench/inference.py                      # the issue's setting: Swin-L (window 12), 480x853, crop 768,
                                                   # stride 512, single scale and the paper's full TTA
    python bench/inference.py --size micro --height 120 --width 213 --crop 96 --stride 64 --frames 4 \
        --scales 0.5 1.0 1.5                       # CPU-sized

One HF `UperNetForSemanticSegmentation` (Swin backbone, random weights, no download, auxiliary head removed as
at test time) is converted with `stcl_jax.convert.from_hf_upernet`, so both frameworks run the same network.
JAX: `stcl_jax.evaluation.inference.Predictor` (compiled once per frame size, data-parallel over local devices).
PyTorch: the same mmseg slide / multi-scale + flip procedure written in torch (eager, autocast to --dtype), on
cuda:0 when present. Reported per setting: frames/s after warm-up, the process CPU seconds per frame (the stable
figure on a shared CPU), the first call's time (JAX: includes compilation), and the fraction of pixels where the
two frameworks predict the same class.

Each framework can run in its own process (as bench/gpu_suite.sh does, so JAX's preallocated device memory never
starves torch): `--torch off --labels-out L.npz` (JAX only), then `--jax off --compare-labels L.npz` (torch only,
agreement against the saved JAX labels; both processes build the same weights from the same seed).
"""

import argparse
import json
import time

import jax
import numpy as np

import benchlib  # noqa: E402  (bench/ is sys.path[0] when a script of it runs)
from stcl_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from stcl_jax.evaluation import inference  # noqa: E402

SIZES = {  # embed_dim, depths, heads (Swin paper / mmseg), window as in the VSPW configs
    "micro": (16, (1, 1, 2, 1), (1, 2, 2, 4), 4),
    "tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large", choices=sorted(SIZES))
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=853)
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--stride", type=int, default=512)
    p.add_argument("--scales", type=float, nargs="+", default=list(inference.DEFAULT_SCALES),
                   help="ratios of the TTA setting (always with flip)")
    p.add_argument("--frames", type=int, default=16, help="timed frames per setting")
    p.add_argument("--batch-size", type=int, default=0, help="frames per call (default: one per device)")
    p.add_argument("--window-batch", type=int, default=4, help="sliding windows per model call")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--decoder-channels", type=int, default=512)
    p.add_argument("--settings", default="single,tta", help="which of single,tta to run (\"\" = none)")
    p.add_argument("--torch", default="on", choices=["on", "off"])
    p.add_argument("--jax", default="on", choices=["on", "off"])
    p.add_argument("--labels-out", default="", help="save the JAX predictions here (.npz) for --compare-labels")
    p.add_argument("--compare-labels", default="", help="agreement of the torch predictions with these labels")
    p.add_argument("--smoke", action="store_true", help="CPU size: Swin-micro, 48x64, crop 32, 2 frames")
    p.add_argument("--score-frames", type=int, default=64,
                   help="frames of one video scored by metrics.VSPWEvaluator (mIoU + VC8/16) to time it; 0 = skip")
    p.add_argument("--json", default="", help="write the result records (bench/benchlib.py) here")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.height, args.width, args.crop, args.stride = "micro", 48, 64, 32, 24
        args.frames, args.decoder_channels, args.score_frames, args.scales = 2, 32, 0, [0.75, 1.0]
    return args


def build_hf(args):
    import torch
    from transformers import SwinConfig, UperNetConfig, UperNetForSemanticSegmentation

    dim, depths, heads, window = SIZES[args.size]
    torch.manual_seed(0)
    backbone = SwinConfig(embed_dim=dim, depths=list(depths), num_heads=list(heads), window_size=window,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = UperNetConfig(backbone_config=backbone, num_labels=124, hidden_size=args.decoder_channels,
                        auxiliary_channels=256, use_auxiliary_head=True)
    return UperNetForSemanticSegmentation(cfg).eval()


# ------------------------------------------------------------------------------------------------------- torch
def torch_predictor(model, args, scales, flip):
    """frames uint8 (N, H, W, 3) -> labels (N, H, W), mmseg slide + aug_test in torch."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    model.auxiliary_head = None  # inference does not compute the auxiliary head
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    crop, stride = (args.crop, args.crop), (args.stride, args.stride)

    def slide(x):
        b, _, h, w = x.shape
        corners = inference.window_grid((h, w), crop, stride)
        wh, ww = min(crop[0], h), min(crop[1], w)
        wins = torch.cat([x[:, :, y:y + wh, x0:x0 + ww] for y, x0 in corners])
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits = torch.cat([model(pixel_values=c).logits for c in wins.split(args.window_batch)]).float()
        total = torch.zeros(b, logits.shape[1], h, w, device=device)
        count = torch.zeros(1, 1, h, w, device=device)
        for k, (y, x0) in enumerate(corners):
            total[:, :, y:y + wh, x0:x0 + ww] += logits[k * b:(k + 1) * b]
            count[:, :, y:y + wh, x0:x0 + ww] += 1
        return total / count

    @torch.no_grad()
    def run(frames):
        x = (torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float() - mean) / std
        b, _, h, w = x.shape
        probs = 0
        for r in scales:
            xs = F.interpolate(x, size=inference.scaled_size((h, w), r), mode="bilinear", align_corners=False)
            if flip:
                xs = torch.cat([xs, xs.flip(3)])
            logits = slide(xs)
            if flip:
                logits = torch.cat([logits[:b], logits[b:].flip(3)])
            p = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)
            probs = probs + (p[:b] + p[b:] if flip else p)
        return probs.argmax(1).to(torch.uint8).cpu().numpy()

    return run


# ------------------------------------------------------------------------------------------------------- scoring
def time_scoring(args) -> dict:
    """frames/s of VSPWEvaluator.add_video (confusion matrix + VC8 + VC16 on device) on one video of masks."""
    from stcl_jax.evaluation import metrics

    rng = np.random.default_rng(1)
    f, h, w = args.score_frames, args.height, args.width
    blocks = rng.choice(np.r_[0:125, 255], size=(1, h // 16 + 1, w // 16 + 1)).astype(np.uint8)
    gt = np.repeat(np.repeat(np.repeat(blocks, f, 0), 16, 1), 16, 2)[:, :h, :w].copy()
    gt[rng.random(gt.shape) < 0.01] = 7
    pred = np.where((gt == 0) | (gt == 255), 0, gt.astype(np.int16) - 1).astype(np.uint8)
    pred[rng.random(gt.shape) < 0.05] = 3
    ev = metrics.VSPWEvaluator()
    ev.add_video("warm-up", gt, pred)  # compiles
    t0, c0 = time.perf_counter(), time.process_time()
    ev.add_video("timed", gt, pred)
    result = ev.result()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"score_frames_per_s": f / wall, "score_cpu_s_per_frame": cpu / f, "score_check_miou": result["miou"]}


# ------------------------------------------------------------------------------------------------------- timing
def time_predictor(predict, frames, batch):
    t0 = time.perf_counter()
    predict(frames[:batch])  # warm-up (JAX: compilation)
    first = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    labels = np.concatenate([predict(frames[s:s + batch]) for s in range(0, len(frames), batch)])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return labels, len(frames) / wall, first, cpu / len(frames)


def main(argv=None):
    args = parse_args(argv)
    from stcl_jax import convert
    from stcl_jax.models import build_segmenter

    hf = build_hf(args)
    if args.jax == "on":  # with --jax off nothing touches a JAX device (torch gets the whole GPU)
        variables, cfg = convert.from_hf_upernet(hf.state_dict())
        if args.dtype == "bfloat16":
            cfg.unlock()
            cfg.dtype = "bfloat16"
            cfg.lock()
        members = [(inference.segmenter_apply(build_segmenter(cfg)), variables)]
        device = jax.devices()[0].device_kind
        batch = max(args.batch_size, jax.local_device_count())
    else:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        batch = max(args.batch_size, 1)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.height, args.width, 3), np.uint8)
    settings = {"single": ("single scale", (1.0,), False),
                "tta": (f"TTA {len(args.scales)} scales + flip", tuple(args.scales), True)}
    settings = [settings[k] for k in args.settings.split(",") if k]
    rows = []
    for name, scales, flip in settings:
        row = {"setting": name}
        if args.jax == "on":
            pred = inference.Predictor(members, mode="slide", crop=(args.crop, args.crop),
                                       stride=(args.stride, args.stride), scales=scales, flip=flip, batch_size=batch,
                                       window_batch=args.window_batch)
            jax_labels, jax_fps, jax_first, jax_cpu = time_predictor(pred, frames, pred.batch_size)
            row.update(jax_frames_per_s=jax_fps, jax_first_call_s=jax_first, jax_cpu_s_per_frame=jax_cpu)
            if args.labels_out:
                np.savez_compressed(_labels_path(args.labels_out, name), labels=jax_labels)
        else:
            jax_labels = _load_labels(args.compare_labels, name)
        if args.torch == "on":
            torch_labels, torch_fps, torch_first, torch_cpu = time_predictor(
                torch_predictor(hf, args, scales, flip), frames, batch)
            row.update(torch_frames_per_s=torch_fps, torch_first_call_s=torch_first, torch_cpu_s_per_frame=torch_cpu)
            if "jax_frames_per_s" in row:
                row["speedup"] = row["jax_frames_per_s"] / torch_fps
            if jax_labels is not None:
                row["agreement"] = float((jax_labels == torch_labels).mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.score_frames > 0 and args.jax == "on":
        rows.append({"setting": "scoring", **time_scoring(args)})
        print(json.dumps(rows[-1]), flush=True)
    framework = "+".join(f for f in ("jax", "torch") if getattr(args, f) == "on")
    records = [benchlib.record(f"inference {framework}, {r['setting']} (Swin-{args.size}, {args.height}x{args.width}, "
                               f"crop {args.crop}, stride {args.stride}, {args.dtype})", framework, device,
                               {k: v for k, v in r.items() if k != "setting"}) for r in rows]
    benchlib.print_records(records)
    benchlib.write_records(args.json, records)


def _labels_path(path, setting):
    return f"{path.removesuffix('.npz')}.{setting.split()[0]}.npz"


def _load_labels(path, setting):
    return np.load(_labels_path(path, setting))["labels"] if path else None


if __name__ == "__main__":
    main()
