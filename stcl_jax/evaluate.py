r"""VSPW evaluation: mIoU, WIoU, pixel/class accuracy, VC8, VC16 and a per-class IoU table, as the official scripts.

Score existing predictions (`DIR/<video>/<frame>.png`, the ground truth's size and names; train ids 0..123, or
VSPW ids 1..124 as `predict --vspw-ids` writes: `--pred-ids`, default auto = the folder's label_ids.json, else
what the values prove, else an error):

    python -m stcl_jax.evaluate --predictions DIR --data-root VSPW_480p --split val [--pred-ids auto|train|vspw]
        [--json OUT]

Run a model over a built split (`stcl_jax.data.build --output DIR`, any dataset: an ADE20K / COCO build is
scored over its own classes, or over VSPW's with `--label-map`) and score it:

    python -m stcl_jax.evaluate --checkpoint CKPT --data DIR --split val [--config CFG[:arg]] [--tta]
        [--ensemble CKPT2 ...] [--save-predictions PRED_DIR] [--json OUT]

CKPT: a params-only model directory (`stcl_jax.models.io`: model_config.json + variables/) or a training
workdir (loaded through `stcl_jax.evaluation.cli.load_member`). `--config` supplies the inference settings
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

from stcl_jax import cli_errors
from stcl_jax.data.sources import scoring_label_space
from stcl_jax.evaluation import cli

log = logging.getLogger("stcl_jax.evaluate")


def _parser() -> argparse.ArgumentParser:
    p = cli_errors.ArgumentParser(prog="python -m stcl_jax.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--predictions", help="prediction PNG folder to score (scoring form)")
    p.add_argument("--data-root", help="extracted VSPW_480p folder (scoring form)")
    p.add_argument("--checkpoint", help="params-only model dir or training workdir (model form)")
    p.add_argument("--data", help="built dataset dir (model form)")
    p.add_argument("--split", default="val")
    p.add_argument("--pred-ids", choices=("auto", "train", "vspw"), default="auto",
                   help="scoring form: the PNGs hold train ids 0..123 or VSPW ids 1..124 (predict --vspw-ids); "
                   "auto: their label_ids.json, else proved by the values (a 124 or a 0), else an error")
    cli.add_inference_arguments(p)
    p.add_argument("--save-predictions", help="write prediction PNGs (train ids) to this folder")
    p.add_argument("--vc-protocol", choices=("vspw", "cffm"), default="vspw")
    p.add_argument("--max-videos", type=int, default=0, help="0 = every video of the split")
    p.add_argument("--label-map", default="", help="model form: score the build's masks mapped onto VSPW's classes "
                   "by this mapping file (e.g. ade20k_to_vspw); default: the build's own classes")
    p.add_argument("--json", help="write the scores here (default with --checkpoint: CKPT/eval_<split>.json)")
    cli_errors.add_verbose_flag(p)
    return p


def main(argv=None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    cli_errors.quiet_logging(a.verbose)
    from stcl_jax.evaluation import metrics, runner

    if a.predictions:
        if not a.data_root:
            p.error("--predictions needs --data-root (the extracted VSPW_480p folder)")
        result = runner.score_prediction_dir(a.predictions, a.data_root, a.split, vc_protocol=a.vc_protocol,
                                             max_videos=a.max_videos, ids=a.pred_ids)
        json_path = a.json
    else:
        if not (a.checkpoint and a.data):
            p.error("give --predictions DIR --data-root ROOT, or --checkpoint CKPT --data DIR")
        members, options = cli.members_and_options(a)  # initialises jax.distributed first
        import jax

        from stcl_jax.evaluation import inference

        space = scoring_label_space(a.data, a.label_map)
        for path, (_, variables) in zip([a.checkpoint, *a.ensemble], members):
            if cli.num_classes(variables) != space.num_classes:
                p.error(f"{path} predicts {cli.num_classes(variables)} classes but {space.where} is scored over "
                        f"{space.num_classes}" + ("" if a.label_map else " (map a build onto VSPW with --label-map)"))
        log.info("inference: %s, %d model(s)", options, len(members))
        predictor = inference.Predictor(members, **options)
        result = runner.evaluate_model(predictor, a.data, a.split, vc_protocol=a.vc_protocol,
                                       max_videos=a.max_videos, save_predictions=a.save_predictions,
                                       num_classes=space.num_classes, raw_lut=space.raw_lut,
                                       class_names=list(space.names))
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
    cli_errors.run(main)
