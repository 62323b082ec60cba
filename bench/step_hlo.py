"""What the compiled train step contains, without a GPU: op counts of its lowered HLO, optionally its memory.

    python bench/step_hlo.py                       # Swin-L UperNet, 768x768, 4 clips x 2 frames, bf16 (the GPU sizes)
    python bench/step_hlo.py --compile             # + compile-only memory_analysis / cost_analysis (slow on a CPU)
    python bench/step_hlo.py --size micro --crop 64 --dtype float32 --json out.json

Lowers the real `stcl_jax.training.loop.make_train_step` for one device and counts, in the StableHLO text before
optimisation: dot_generals by precision and operand dtypes, convolutions, transposes, scatters, gathers, custom
calls and collectives. These are the CPU-checkable claims of the fast-step design: no `HIGHEST`-precision dot, no
fp32 dot in a bf16 model, no scatter from the CE backward. `--compile` adds XLA's memory_analysis (on the CPU
backend an upper bound for a GPU: it upcasts bf16 dots) and cost_analysis FLOPs (which count a scan body once).
"""

import argparse
import collections
import json
import re
import time

import jax

from stcl_jax.models import build_segmenter, model_config
from stcl_jax.training import inputs, loop, mesh as mesh_lib, optim, state as state_lib
from stcl_jax.training import checkpoint as ckpt_lib

WINDOW = {"micro": 4, "tiny": 7, "small": 7, "base": 7, "large": 12}
_DOT = re.compile(r"stablehlo\.dot_general.*?:\s*\((tensor<[^>]*>),\s*(tensor<[^>]*>)\)")
_OPS = ("convolution", "transpose", "scatter", "gather", "custom_call", "all_reduce", "all_gather",
        "reduce_scatter", "collective_permute", "while")


def _dtype(tensor_type: str) -> str:
    return tensor_type[len("tensor<"):-1].split("x")[-1]


def hlo_op_stats(text: str) -> dict:
    """Counts of the ops this script reports in a StableHLO module's text (`lowered.as_text()`)."""
    dots = collections.Counter()
    for line in text.splitlines():
        if "stablehlo.dot_general" not in line:
            continue
        m = _DOT.search(line)
        types = f"{_dtype(m.group(1))}x{_dtype(m.group(2))}" if m else "?"
        precision = "HIGHEST" if "HIGHEST" in line else ("HIGH" if "precision<HIGH>" in line else "DEFAULT")
        dots[f"{types} {precision}"] += 1
    ops = {op: len(re.findall(rf"stablehlo\.{op}\b", text)) for op in _OPS}
    return {"dot_general": dict(sorted(dots.items())), "dot_total": sum(dots.values()), **ops}


def build_config(args):
    """The paper's recipe at the bench's sizes (stcl_jax/configs/base.py), one device."""
    from stcl_jax.configs import base

    c = base.base_config()
    c.global_batch_size = args.clips
    c.data.num_frames = args.frames
    c.data.crop_size = (args.crop, args.crop)
    c.loss.stcl_weight = 0.0 if args.no_stcl else 0.2
    c.loss.stcl_pool = args.stcl_pool
    overrides = {"dtype": args.dtype}
    if args.stcl_feature:
        overrides["projection_feature"] = args.stcl_feature
    c.model = model_config(args.size, window_size=WINDOW[args.size], **overrides)
    c.lock()
    return c


def lower_step(c):
    mesh = mesh_lib.make_mesh(jax.local_devices()[:1])
    model = build_segmenter(c.model)
    tx, schedule = optim.make_optimizer(c)
    crop = tuple(c.data.crop_size)
    abstract, shardings = state_lib.abstract_state_and_shardings(model, tx, (1, *crop, 3), mesh, c.mesh)
    sharding = mesh_lib.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in
             inputs.batch_spec(c, c.global_batch_size).items()}
    step = jax.jit(loop.make_train_step(model, tx, schedule, c), donate_argnums=0)
    return step.lower(ckpt_lib.abstract_with_shardings(abstract, shardings), batch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large", choices=sorted(WINDOW))
    p.add_argument("--crop", type=int, default=768)
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--frames", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--stcl-feature", default="", help="model.projection.feature ('' = the config default)")
    p.add_argument("--stcl-pool", type=int, default=1, help="config.loss.stcl_pool")
    p.add_argument("--no-stcl", action="store_true", help="config.loss.stcl_weight = 0")
    p.add_argument("--compile", action="store_true", help="also compile: memory_analysis, cost_analysis")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    c = build_config(args)
    t0 = time.perf_counter()
    lowered = lower_step(c)
    out = {"args": vars(args), "jax": jax.__version__, "backend": jax.default_backend(),
           "projection": dict(c.model.projection), "lower_s": round(time.perf_counter() - t0, 1),
           "hlo": hlo_op_stats(lowered.as_text())}
    if args.compile:
        t0 = time.perf_counter()
        compiled = lowered.compile()
        out["compile_s"] = round(time.perf_counter() - t0, 1)
        out["memory_bytes"] = loop.log_memory(compiled)
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out["xla_flops"] = float((cost or {}).get("flops", 0.0))
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
