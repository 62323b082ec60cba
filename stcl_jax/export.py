"""Params-only export of a training checkpoint, optionally also as a PyTorch (Hugging Face UperNet) safetensors file.

    python -m stcl_jax.export --workdir DIR [--step N] --output OUT [--dtype bf16] [--safetensors]

Reads `DIR/config.json` (the resolved training config) and only `params` and `batch_stats` of
`DIR/checkpoints/<step>/state` (an Orbax partial restore: the optimizer state is never loaded), and writes OUT in
the `stcl_jax.models.io` layout (`variables/` + `model_config.json`) that `evaluate`, `predict`, `pseudo_label`
and training's `config.init_from` load. `--dtype bf16` stores the floating-point params in bfloat16 (half the
size; BatchNorm statistics stay float32; the model config is unchanged, so compute follows `model_config.dtype`).

`--safetensors` also writes `OUT/hf/{model.safetensors, config.json}`, loadable with
`transformers.UperNetForSemanticSegmentation.from_pretrained(OUT/hf)`: the names come from running the importer's
own key mapping (`stcl_jax.convert.mapping`, hf-upernet) over the key list of the HF model for this config, so
import and export cannot drift apart. Needs torch + transformers. The STCL projection head (training only) has no
HF counterpart and is left out; HF tensors our model lacks (the unused final `layernorm` of SwinBackbone,
BatchNorm `num_batches_tracked`) are written with their init values. Both lists are printed.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import numpy as np

from stcl_jax.convert import hf_export
from stcl_jax.workdir import restore_variables

log = logging.getLogger("stcl_jax.export")
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def cast_params(variables: dict, dtype: str) -> dict:
    """Floating-point params in `dtype` ("float32" / "bfloat16"); batch_stats unchanged."""
    import jax.numpy as jnp

    target = jnp.dtype(DTYPES.get(dtype, dtype))
    cast = lambda x: x.astype(target) if np.issubdtype(x.dtype, np.floating) else x  # noqa: E731
    return {"params": jax.tree.map(cast, variables["params"]), "batch_stats": variables["batch_stats"]}


# ------------------------------------------------------------------------------------------------------- main --
def export(workdir: str, output: str, *, step: int | None = None, dtype: str = "float32",
           safetensors: bool = False) -> dict:
    """Writes the params-only export (and optionally the HF safetensors); returns a summary."""
    from stcl_jax.models.io import save_variables

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if safetensors:
        hf_export.check_safetensors_dependencies()
    variables, model_cfg, step = restore_variables(workdir, step)
    variables = cast_params(variables, dtype)
    save_variables(output, variables, model_cfg)
    summary = {"workdir": os.path.abspath(workdir), "step": step, "output": os.path.abspath(output),
               "dtype": DTYPES[dtype],
               "parameters": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
               "bytes": int(sum(x.nbytes for x in jax.tree.leaves(variables)))}
    if safetensors:
        report = hf_export.write_safetensors(variables, model_cfg, os.path.join(output, "hf"))
        summary["safetensors"] = {"dir": os.path.join(os.path.abspath(output), "hf"), **report}
    with open(os.path.join(output, "export.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv=None) -> int:
    from stcl_jax import cli_errors

    p = cli_errors.ArgumentParser(prog="python -m stcl_jax.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="training workdir (checkpoints/ + config.json)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    p.add_argument("--output", required=True, help="export directory (models/io layout)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of the params")
    p.add_argument("--safetensors", action="store_true", help="also OUT/hf/model.safetensors (HF UperNet names); "
                   "needs torch + transformers: pip install -e .[torch]")
    cli_errors.add_verbose_flag(p)
    a = p.parse_args(argv)
    cli_errors.quiet_logging(a.verbose)
    s = export(a.workdir, a.output, step=a.step, dtype=a.dtype, safetensors=a.safetensors)
    print(f"exported step {s['step']} of {s['workdir']} to {s['output']}: {s['parameters'] / 1e6:.2f} M params "
          f"({s['dtype']}), {s['bytes'] / 2 ** 20:.1f} MiB")
    if "safetensors" in s:
        st = s["safetensors"]
        print(f"safetensors: {st['dir']}/model.safetensors; left out (no HF counterpart): {len(st['left_out'])} "
              f"tensors {st['left_out'][:4]}...; filled with init values: {len(st['filled'])} {st['filled'][:4]}...")
    return 0


if __name__ == "__main__":
    from stcl_jax import cli_errors

    cli_errors.run(main)
