r"""CLI: convert a PyTorch checkpoint into a params-only stcl_jax model directory (Orbax + model_config.json).

    python -m stcl_jax.convert --from hf-upernet --input upernet-swin-large/ --output /ckpt/upernet_swin_l
    python -m stcl_jax.convert --from swin-official --input swin_large_patch4_window12_384_22k.pth \
        --output /ckpt/swin_l_22k --window-size 12
    python -m stcl_jax.convert --from timm-resnet --input resnest101e.pth --output /ckpt/resnest101_in1k
    python -m stcl_jax.convert --from cswin-official --input cswin_large_384.pth --output /ckpt/cswin_l_22k_384

The output directory is what training's `config.init_from` reads (stcl_jax.models.io.load_variables).
Backbone-only sources write only `params/backbone`; training initialises the rest and reports it.
"""

from __future__ import annotations

import argparse

from stcl_jax import cli_errors, convert
from stcl_jax.convert import cnn, cswin
from stcl_jax.models.io import save_variables


def main(argv=None) -> int:
    parser = cli_errors.ArgumentParser(prog="python -m stcl_jax.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="checkpoint format",
                        choices=(*convert.SOURCES, *cnn.SOURCES, *cswin.SOURCES))
    parser.add_argument("--input", required=True, help="a .pth/.bin/.safetensors file or a save_pretrained folder")
    parser.add_argument("--output", required=True, help="output directory (created; its contents replaced)")
    parser.add_argument("--window-size", type=int, default=None,
                        help="target window size; relative-position tables are interpolated if it differs")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="classes of the model config written for a backbone-only import (default 124)")
    cli_errors.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    cli_errors.quiet_logging(args.verbose)

    try:
        state_dict, hf_config = convert.load_state_dict(args.input)
        if args.source in cswin.SOURCES:
            full = False
            variables, cfg, report = cswin.convert_state_dict(state_dict, args.source)
        elif args.source in cnn.SOURCES:
            full = cnn.SOURCES[args.source][2]
            variables, cfg, report = cnn.convert_state_dict(state_dict, args.source,
                                                            num_classes=args.num_classes if full else None)
        else:
            full = convert.mapping.SOURCES[args.source][2]
            variables, cfg, report = convert.convert_state_dict(
                state_dict, args.source, window_size=args.window_size,
                num_classes=args.num_classes if full else None, hf_config=hf_config)
        if not full and args.num_classes:
            cfg.num_classes = args.num_classes
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise type(e)(f"--input {args.input}: {cli_errors.one_line(e)}") from e
    save_variables(args.output, variables, cfg)
    print(report)
    if cfg.backbone == "swin":
        encoder = f"window {cfg.swin.window_size}"
    elif cfg.backbone == "cswin":
        encoder = f"cswin depths {cfg.cswin.depths}, split sizes {cfg.cswin.split_size}"
    else:
        encoder = f"{cfg.backbone} {cfg.cnn.depths}"
    print(f"wrote {args.output} (size {cfg.size}, {encoder}, {cfg.num_classes} classes)")
    return 0


if __name__ == "__main__":
    cli_errors.run(main)
