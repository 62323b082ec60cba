"""Command-line pieces shared by `stcl_jax.evaluate`, `predict` and `pseudo_label`: inference flags, loading models."""

from __future__ import annotations

import argparse

from stcl_jax import config_files, distributed
from stcl_jax.configs import base
from stcl_jax.workdir import load_trained_variables


def add_inference_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --ensemble, --mode/--crop/--stride, --tta/--scales/--flip, --batch-size, --distributed."""
    p.add_argument("--config", help="config file[:arg] for the inference settings (config.eval, config.data)")
    p.add_argument("--ensemble", nargs="+", default=[], help="more checkpoints averaged with --checkpoint")
    p.add_argument("--mode", choices=("slide", "whole"), help="default: config.eval.mode, else slide")
    p.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="default: config.eval.crop, else 768 768")
    p.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), help="default: config.eval.stride, else 512")
    p.add_argument("--tta", action="store_true", help="ratios 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 + horizontal flip")
    p.add_argument("--scales", type=float, nargs="+", help="test ratios (overrides --tta's)")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped views")
    p.add_argument("--batch-size", type=int, default=0, help="frames per batch (default: one per device)")
    p.add_argument("--distributed", choices=("auto", "on", "off"), default="auto",
                   help="jax.distributed.initialize(), as in stcl_jax.train")


def load_member(path: str, what: str = "--checkpoint"):
    """(apply_fn, variables, model_config) of an export dir or a training workdir; `what` (the flag) names it in
    errors."""
    from stcl_jax.evaluation import inference
    from stcl_jax.models import build_segmenter

    variables, model_cfg = load_trained_variables(path, what)
    return inference.segmenter_apply(build_segmenter(model_cfg)), variables, model_cfg


def load_members(paths, flags=None) -> list:
    """[(apply_fn, variables)] of params-only dirs or training workdirs; `flags[i]` names path i in errors."""
    members = []
    for path, flag in zip(paths, flags or ["--checkpoint"] * len(paths)):
        try:
            members.append(load_member(path, flag)[:2])
        except ModuleNotFoundError as e:
            raise RuntimeError(f"checkpoint {path}: loading it needs {e.name}, which is missing; export the "
                               "workdir to a params-only dir with `python -m stcl_jax.export` first") from e
    return members


def num_classes(variables) -> int:
    """The number of classes a segmenter's variables predict (its decode head's classifier)."""
    return int(variables["params"]["decode_head"]["conv_seg"]["bias"].shape[0])


def inference_options(a, config=None) -> dict:
    """`inference.Predictor` keyword arguments from the flags, else `config.eval` / `config.data` (without
    --config: the schema's defaults, mmseg's sliding window and ImageNet normalisation)."""
    from stcl_jax.evaluation import inference

    config = base.base_config() if config is None else config
    scales = a.scales or (inference.DEFAULT_SCALES if a.tta else (1.0,))
    return dict(mode=a.mode or config.eval.mode, crop=tuple(a.crop or config.eval.crop),
                stride=tuple(a.stride or config.eval.stride), scales=tuple(scales), flip=a.flip or a.tta,
                mean=tuple(config.data.mean), std=tuple(config.data.std), batch_size=a.batch_size)


def members_and_options(a, checkpoint_flag: str = "--checkpoint") -> tuple[list, dict]:
    """Initialises the distributed runtime (--distributed), loads --checkpoint + --ensemble, resolves the options.

    `checkpoint_flag`: the flag that gave `a.checkpoint` (named in errors; the others came from --ensemble)."""
    distributed.initialize_distributed(a.distributed)
    config = config_files.load_config(a.config) if a.config else None
    flags = [checkpoint_flag] + ["--ensemble"] * len(a.ensemble)
    return load_members([a.checkpoint, *a.ensemble], flags), inference_options(a, config)
