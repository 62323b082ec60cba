r"""VSPW evaluation: mIoU, WIoU, pixel/class accuracy, VC8, VC16 and a per-class IoU table, as the official scripts.

Score existing predictions (`DIR/<video>/<frame>.png`, train ids 0..123, the ground truth's size and names):

    python -m stcl_jax.evaluate --predictions DIR --data-root VSPW_480p --split val [--json OUT]

Run a model over a built split (`stcl_jax.data.build --output DIR`) and score it:

    python -m stcl_jax.evaluate --checkpoint CKPT --data DIR --split val [--config CFG[:arg]] [--tta]
        [--ensemble CKPT2 ...] [--save-predictions PRED_DIR] [--json OUT]

CKPT: a params-only model directory (`stcl_jax.models.io`: model_config.json + variables/) or a training
workdir (loaded through `stcl_jax.pseudo_label.load_member`). `--config` supplies the inference settings
(`config.eval.mode/crop/stride`, `config.data.mean/std`); `--mode/--crop/--stride` override them. `--tta` is
the paper's test-time augmentation: ratios 0.5..1.75 and horizontal flip. `--ensemble` adds members whose softmax
is averaged with CKPT's. `--vc-protocol cffm` scores VC as CFFM/MRCFA/TV3S do (see stcl_jax.evaluation.metrics).
The JSON (default: CKPT/eval_<split>.json for the model form) holds every score, the per-class table and the
confusion matrix. Multi-process: run the same command on every process (`--distributed`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("stcl_jax.evaluate")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m stcl_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", help="prediction PNG folder to score (scoring form)")
    p.add_argument("--data-root", help="extracted VSPW_480p folder (scoring form)")
    p.add_argument("--checkpoint", help="params-only model dir or training workdir (model form)")
    p.add_argument("--data", help="built dataset dir (model form)")
    p.add_argument("--split", default="val")
    p.add_argument("--config", help="config file[:arg] for the inference settings (config.eval, config.data)")
    p.add_argument("--ensemble", nargs="+", default=[], help="more checkpoints averaged with --checkpoint")
    p.add_argument("--mode", choices=("slide", "whole"))
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--tta", action="store_true", help="ratios 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 + horizontal flip")
    p.add_argument("--scales", type=float, nargs="+", help="test ratios (overrides --tta's)")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped views")
    p.add_argument("--batch-size", type=int, default=0, help="frames per batch (default: one per device)")
    p.add_argument("--save-predictions", help="write prediction PNGs (train ids) to this folder")
    p.add_argument("--vc-protocol", choices=("vspw", "cffm"), default="vspw")
    p.add_argument("--max-videos", type=int, default=0, help="0 = every video of the split")
    p.add_argument("--json", help="write the scores here")
    p.add_argument("--distributed", choices=("auto", "on", "off"), default="auto")
    return p


def load_config(spec: str):
    """`configs/x.py[:arg]` -> the locked ConfigDict of its get_config(arg)."""
    from stcl_jax.sweep import load_config_module, split_config_spec

    path, arg = split_config_spec(spec)
    return load_config_module(path).get_config(arg)


def load_members(paths):
    """[(apply_fn, variables)] of params-only dirs or training workdirs."""
    from stcl_jax.pseudo_label import load_member

    members = []
    for path in paths:
        try:
            members.append(load_member(path)[:2])
        except ModuleNotFoundError as e:
            raise RuntimeError(f"checkpoint {path}: loading it needs {e.name}, which is missing; export the "
                               "workdir to a params-only dir with `python -m stcl_jax.export` first") from e
    return members


def inference_options(a, config=None) -> dict:
    """Predictor keyword arguments from the flags, falling back to `config.eval` / `config.data`, then mmseg's."""
    from stcl_jax.evaluation import inference

    ev = config.eval if config is not None and "eval" in config else {}
    data = config.data if config is not None and "data" in config else {}
    scales = a.scales or (inference.DEFAULT_SCALES if a.tta else (1.0,))
    return dict(mode=a.mode or ev.get("mode", "slide"), crop=tuple(a.crop or ev.get("crop", (768, 768))),
                stride=tuple(a.stride or ev.get("stride", (512, 512))), scales=tuple(scales), flip=a.flip or a.tta,
                mean=tuple(data.get("mean", inference.IMAGENET_MEAN)), std=tuple(data.get("std", inference.IMAGENET_STD)),
                batch_size=a.batch_size)


def main(argv=None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(message)s", force=True)
    from stcl_jax.evaluation import metrics, runner

    if a.predictions:
        if not a.data_root:
            p.error("--predictions needs --data-root (the extracted VSPW_480p folder)")
        result = runner.score_prediction_dir(a.predictions, a.data_root, a.split, vc_protocol=a.vc_protocol,
                                             max_videos=a.max_videos)
        json_path = a.json
    else:
        if not (a.checkpoint and a.data):
            p.error("give --predictions DIR --data-root ROOT, or --checkpoint CKPT --data DIR")
        from stcl_jax.training import mesh

        mesh.initialize_distributed(a.distributed)
        import jax

        from stcl_jax.evaluation import inference

        config = load_config(a.config) if a.config else None
        members = load_members([a.checkpoint, *a.ensemble])
        options = inference_options(a, config)
        log.info("inference: %s, %d model(s)", options, len(members))
        predictor = inference.Predictor(members, **options)
        result = runner.evaluate_model(predictor, a.data, a.split, vc_protocol=a.vc_protocol,
                                       max_videos=a.max_videos, save_predictions=a.save_predictions)
        result["inference"] = {k: v for k, v in options.items() if k != "batch_size"}
        result["checkpoints"] = [a.checkpoint, *a.ensemble]
        json_path = a.json or os.path.join(a.checkpoint, f"eval_{a.split}.json")
        if jax.process_index() != 0:
            return 0
    print(metrics.format_table(result, result["class_names"]))
    if json_path:
        runner.write_json(result, json_path)
        log.info("scores written to %s", json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
