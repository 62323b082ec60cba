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

log = logging.getLogger("stcl_jax.export")
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


# ------------------------------------------------------------------------------------------------ checkpoints --
def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the complete checkpoints in `workdir/checkpoints` (Orbax renames a step dir only when done)."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} has no checkpoints/ folder: is it a training workdir "
                                "(python -m stcl_jax.train --workdir ...)?")
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state")))


def training_model_config(workdir: str):
    """The model config of the run, from `workdir/config.json` (written by training)."""
    from stcl_jax.models.config import config_from_dict

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: training writes the resolved config there; without it the "
                                "model architecture of the checkpoint is unknown")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if "model" not in config:
        raise ValueError(f"{path} has no 'model' section")
    return config_from_dict(config["model"])


def restore_variables(workdir: str, step: int | None = None) -> tuple[dict, object, int]:
    """({"params", "batch_stats"} as NumPy, model config, step) of `workdir`'s checkpoint `step` (default newest).

    Only those two subtrees are read (Orbax partial restore), so the optimizer state costs no memory."""
    import orbax.checkpoint as ocp

    from stcl_jax.training import checkpoint as ckpt_lib

    workdir = os.path.abspath(workdir)
    steps = checkpoint_steps(workdir)
    directory = os.path.join(workdir, "checkpoints")
    if not steps:
        raise FileNotFoundError(f"{workdir}/checkpoints holds no complete checkpoint")
    if step is None:  # the newest intact one (a damaged newer one is warned about, not moved: this only reads)
        step, bad = ckpt_lib.newest_intact_step(directory, steps)
        if step is None:
            raise ckpt_lib.no_intact_error(directory, bad)
    elif step not in steps:
        raise ValueError(f"--step {step}: {workdir}/checkpoints has steps {steps}")
    elif reason := ckpt_lib.check_step(directory, step):
        raise ValueError(f"--step {step}: the checkpoint in {directory} is damaged: {reason}")
    model_cfg = training_model_config(workdir)
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    tree = checkpointer.metadata(path).item_metadata.tree
    if "params" not in tree:
        raise ValueError(f"{path}: no 'params' in the checkpoint (top-level items: {sorted(tree)})")
    wanted = {k: tree[k] for k in ("params", "batch_stats") if k in tree and jax.tree.leaves(tree[k])}
    item = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), wanted)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                                                       partial_restore=True))
    variables = jax.tree.map(np.asarray, {"params": restored["params"], "batch_stats": restored.get("batch_stats", {})})
    bad = [leaf for leaf in jax.tree.leaves(variables) if np.issubdtype(leaf.dtype, np.inexact)
           and not np.isfinite(leaf).all()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} of {len(jax.tree.leaves(variables))} arrays hold NaN or inf (a diverged "
                         "run); use an earlier --step")
    return variables, model_cfg, step


def load_trained_variables(path: str, what: str = "path") -> tuple[dict, object]:
    """({"params", "batch_stats"}, model config) of a params-only export (model_config.json) or of the newest
    checkpoint of a training workdir (checkpoints/); `what` names the flag / field in the error."""
    if os.path.isfile(os.path.join(path, "model_config.json")):
        from stcl_jax.models.io import load_variables

        return load_variables(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        variables, model_cfg, step = restore_variables(path)
        log.info("%s: the training workdir's checkpoint at step %d (params and batch_stats only)", path, step)
        return variables, model_cfg
    raise FileNotFoundError(f"{what} {path}: neither a params-only export (model_config.json, from "
                            "`python -m stcl_jax.export`) nor a training workdir (checkpoints/)")


def cast_params(variables: dict, dtype: str) -> dict:
    """Floating-point params in `dtype` ("float32" / "bfloat16"); batch_stats unchanged."""
    import jax.numpy as jnp

    target = jnp.dtype(DTYPES.get(dtype, dtype))
    cast = lambda x: x.astype(target) if np.issubdtype(x.dtype, np.floating) else x  # noqa: E731
    return {"params": jax.tree.map(cast, variables["params"]), "batch_stats": variables["batch_stats"]}


# ------------------------------------------------------------------------------------------------ safetensors --
SAFETENSORS_MODULES = ("torch", "transformers", "safetensors")


def check_safetensors_dependencies() -> None:
    """ImportError (one line naming the extra) when --safetensors cannot run; called before any file is written."""
    import importlib.util

    missing = [m for m in SAFETENSORS_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"--safetensors needs torch, transformers and safetensors ({', '.join(missing)} not "
                          "installed): pip install -e .[torch]")


def hf_upernet_config(model_cfg):
    """The `transformers.UperNetConfig` (Swin backbone) with the architecture of `model_cfg`."""
    import transformers

    if model_cfg.get("backbone", "swin") != "swin":
        raise ValueError(f"model backbone={model_cfg.backbone!r}: the HF UperNet export writes a Swin backbone only")
    if model_cfg.aux.in_index != 2:
        raise ValueError(f"model aux.in_index={model_cfg.aux.in_index}: HF UperNet's auxiliary head reads stage 3 "
                         "(index 2) only, so this model has no HF equivalent")
    s = model_cfg.swin
    swin = transformers.SwinConfig(embed_dim=s.embed_dim, depths=list(s.depths), num_heads=list(s.num_heads),
                                   window_size=s.window_size, patch_size=s.patch_size, mlp_ratio=s.mlp_ratio,
                                   qkv_bias=s.qkv_bias, drop_path_rate=s.drop_path_rate,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    return transformers.UperNetConfig(backbone_config=swin, hidden_size=model_cfg.decoder.channels,
                                      pool_scales=list(model_cfg.decoder.pool_scales),
                                      auxiliary_channels=model_cfg.aux.channels,
                                      auxiliary_num_convs=model_cfg.aux.num_convs, num_labels=model_cfg.num_classes)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _to_torch_layout(value: np.ndarray, leaf: str, part: str) -> np.ndarray:
    """Inverse of the importer's layouts: Flax conv (kh, kw, in, out) / Dense (in, out) kernels -> PyTorch;
    `part` k of our fused qkv -> HF's separate q/k/v. Other leaves keep their layout."""
    if leaf == "kernel" and value.ndim == 4:
        value = value.transpose(3, 2, 0, 1)
    elif leaf == "kernel" and value.ndim == 2:
        value = value.T
    if part:
        value = np.split(value, 3, axis=0)[int(part)]
    return np.ascontiguousarray(value)


def to_hf_state_dict(variables: dict, model_cfg) -> tuple[dict, dict]:
    """(HF UperNet state dict of NumPy arrays, {"left_out": our leaves not exported, "filled": HF keys set to init}).

    Every key of the HF model is mapped to our leaf with `stcl_jax.convert.mapping.rename("hf-upernet", ...)`."""
    import torch
    import transformers

    from stcl_jax.convert import _leaf, mapping

    with torch.device("meta"):  # key names and shapes only, no memory
        hf = transformers.UperNetForSemanticSegmentation(hf_upernet_config(model_cfg))
    ours = {k: np.asarray(v) for k, v in _flat(variables).items()}
    used, filled, out = set(), [], {}
    for key, tensor in hf.state_dict().items():
        shape = tuple(tensor.shape)
        if key.endswith("relative_position_bias_table"):
            module, kind = key.rsplit(".", 1)
            target = mapping.rename("hf-upernet", key)
            target = target and target.rsplit("/", 1)[0]
        else:
            module, _, kind = key.rpartition(".")
            target = mapping.rename("hf-upernet", module)
        if target is None or kind == "num_batches_tracked":
            if kind not in ("weight", "bias", "num_batches_tracked"):
                raise ValueError(f"HF key {key} has no stcl_jax counterpart and no known init value")
            init = {"weight": np.ones, "bias": np.zeros}.get(kind, lambda s: np.zeros(s, np.int64))
            out[key] = init(shape).astype(np.int64 if kind == "num_batches_tracked" else np.float32)
            filled.append(key)
            continue
        target, _, part = target.partition("#")
        collection, leaf = _leaf(target, kind, np.empty(shape))
        name = f"{collection}/{target}/{leaf}"
        if name not in ours:
            raise KeyError(f"HF key {key} maps to {name}, which the variables lack (were they made for another "
                           "model config?)")
        value = _to_torch_layout(ours[name], leaf, part)
        if value.shape != shape:
            raise ValueError(f"{name} -> {key}: shape {value.shape}, HF expects {shape}")
        out[key] = value
        used.add(name)
    return out, {"left_out": sorted(set(ours) - used), "filled": filled}


def write_safetensors(variables: dict, model_cfg, directory: str) -> dict:
    """`directory/model.safetensors` + `directory/config.json` (HF `from_pretrained` layout); returns the report."""
    import torch
    from safetensors.torch import save_file

    state, report = to_hf_state_dict(variables, model_cfg)
    os.makedirs(directory, exist_ok=True)
    tensors = {}
    for k, v in state.items():  # torch cannot take a NumPy bfloat16 array: cast through float32
        if str(v.dtype) == "bfloat16":
            tensors[k] = torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
        else:
            tensors[k] = torch.from_numpy(np.array(v, order="C"))  # (ascontiguousarray would make 0-d 1-d)
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    hf_cfg = hf_upernet_config(model_cfg)
    hf_cfg.architectures = ["UperNetForSemanticSegmentation"]
    hf_cfg.save_pretrained(directory)
    return report


# ------------------------------------------------------------------------------------------------------- main --
def export(workdir: str, output: str, *, step: int | None = None, dtype: str = "float32",
           safetensors: bool = False) -> dict:
    """Writes the params-only export (and optionally the HF safetensors); returns a summary."""
    from stcl_jax.models.io import save_variables

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if safetensors:
        check_safetensors_dependencies()
    variables, model_cfg, step = restore_variables(workdir, step)
    variables = cast_params(variables, dtype)
    save_variables(output, variables, model_cfg)
    summary = {"workdir": os.path.abspath(workdir), "step": step, "output": os.path.abspath(output),
               "dtype": DTYPES[dtype],
               "parameters": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
               "bytes": int(sum(x.nbytes for x in jax.tree.leaves(variables)))}
    if safetensors:
        report = write_safetensors(variables, model_cfg, os.path.join(output, "hf"))
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
