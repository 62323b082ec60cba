"""Swin window attention, forward + backward: the XLA einsum path against the fused Pallas kernels.

    python bench/attention_kernel.py                 # Swin-L at a 768 crop: 8 images, window 12, bf16, every
                                                     # stage, regular and shifted windows
    python bench/attention_kernel.py --smoke         # 1 image at a 96 crop, float32, on a CPU: Pallas runs in
                                                     # interpret mode there, so its times are a sanity figure only
    python bench/attention_kernel.py --impls xla,pallas,cudnn --tile-q 32 --groups 2,16 --pipeline-stages 1,1

Per case: `jax.value_and_grad` of sum(attention(q, k, v, bias) * cotangent) w.r.t. q, k, v and the (heads, N,
N) bias (what the kernel replaces: the qkv / proj Dense layers around it are the same in every variant), jitted
once, `--steps` calls back to back with one block at the end. impls: "xla" (`swin.einsum_attention`, the model's
default: saves bf16 probabilities), "pallas" (`stcl_jax.kernels.window_attention` with `--tile-q`, `--groups`,
`--warps`, `--pipeline-stages`), "cudnn" (`jax.nn.dot_product_attention(implementation="cudnn")`, regular windows
only, GPU only).
Reported: ms per forward + backward, compiled temporaries (`memory_analysis()`), the speedup over xla, and the
largest relative L2 difference of the output and the four gradients from xla (the kernel's numerics on this
device: ~1e-7 in float32, ~1e-2 in bf16).
"""

from __future__ import annotations

import argparse

import benchlib  # (bench/ is sys.path[0] when a script of it runs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impls", default="xla,pallas", help="comma-separated: xla, pallas, cudnn")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--stages", default="", help="comma-separated stage numbers (default: all)")
    p.add_argument("--tile-q", type=int, default=0, help="pallas query tile (GPU; 0 = the kernel's default)")
    p.add_argument("--groups", default="", help="pallas windows per program 'fwd,bwd' ('' = defaults)")
    p.add_argument("--warps", default="4,8", help="pallas Triton warps 'fwd,bwd'")
    p.add_argument("--pipeline-stages", default="", help="pallas Triton pipelining stages 'fwd,bwd' ('' = 3)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="small shapes, float32, 2 steps (CPU)")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    if a.smoke:
        a.dtype, a.steps = "float32", 2
    return a


def attention_fns(a):
    import jax

    from stcl_jax.kernels.window_attention import window_attention
    from stcl_jax.models.swin import einsum_attention

    groups = tuple(int(g) for g in a.groups.split(",")) if a.groups else (None, None)
    warps = tuple(int(w) for w in a.warps.split(","))
    stages = tuple(int(s) for s in a.pipeline_stages.split(",")) if a.pipeline_stages else (None, None)

    def cudnn(q, k, v, bias, ids):
        if ids is not None:
            raise ValueError("cudnn: regular windows only")
        b, nw, n, h, d = q.shape
        flat = lambda t: t.reshape(b * nw, n, h, d)  # noqa: E731
        out = jax.nn.dot_product_attention(flat(q), flat(k), flat(v), bias=bias[None].astype(q.dtype), scale=1.0,
                                           implementation="cudnn")
        return out.reshape(q.shape)

    return {"xla": einsum_attention, "cudnn": cudnn,
            "pallas": lambda q, k, v, bias, ids: window_attention(q, k, v, bias, ids, tile_q=a.tile_q or None,
                                                                  groups=groups, num_warps=warps,
                                                                  num_stages=stages)}


def rel_l2(x, ref):
    import numpy as np

    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def main(argv=None):
    a = parse_args(argv)
    import jax
    import jax.numpy as jnp

    from stcl_jax.kernels.window_attention import SMALL, SWIN_L, stage_cases

    dev = jax.devices()[0]
    fns = attention_fns(a)
    impls = a.impls.split(",")
    unknown = sorted(set(impls) - set(fns))
    if unknown:
        raise SystemExit(f"--impls: unknown {unknown}; choose from {sorted(fns)}")
    stages = {int(s) for s in a.stages.split(",")} if a.stages else None
    records = []
    for tag, shape, ids in stage_cases(SMALL if a.smoke else SWIN_L):
        if stages and int(tag.split()[0][len("stage"):]) not in stages:
            continue
        keys = jax.random.split(jax.random.key(0), 5)
        q, k, v, ct = (jax.random.normal(kk, shape, jnp.float32).astype(a.dtype) for kk in keys[:4])
        q = q * shape[-1] ** -0.5
        bias = jax.random.normal(keys[4], (shape[3], shape[2], shape[2]), jnp.float32)
        figures, notes, results = {}, [], {}
        for impl in impls:
            if impl == "cudnn" and (ids is not None or dev.platform != "gpu"):
                notes.append("cudnn: regular windows on a GPU only")
                continue
            loss = lambda q, k, v, bias, impl=impl: jnp.sum(  # noqa: E731
                fns[impl](q, k, v, bias, ids).astype(jnp.float32) * ct.astype(jnp.float32))
            try:
                compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))).lower(q, k, v, bias).compile()
                seconds, results[impl] = benchlib.timed(compiled, (q, k, v, bias), a.steps)
            except Exception as e:  # noqa: BLE001 (one failing variant must not hide the others)
                notes.append(f"{impl}: {benchlib.error_status(e)}")
                continue
            figures[f"{impl}_ms"] = 1e3 * seconds
            memory = compiled.memory_analysis()
            if memory is not None:
                figures[f"{impl}_temp_gib"] = memory.temp_size_in_bytes / 2**30
        if "xla" in results:
            ref = jax.tree.leaves(results["xla"])
            for impl in set(results) - {"xla"}:
                figures[f"{impl}_speedup"] = figures["xla_ms"] / figures[f"{impl}_ms"]
                figures[f"{impl}_max_rel_l2_vs_xla"] = max(  # the loss value and the four gradients
                    rel_l2(x, r) for x, r in zip(jax.tree.leaves(results[impl]), ref))
        if dev.platform == "cpu" and "pallas" in results:
            notes.append("pallas ran in interpret mode (CPU): its time is a sanity figure, not performance")
        status = "ok" if figures else "error: no variant ran"
        records.append(benchlib.record(f"window attention fwd+bwd {tag} {list(shape)} {a.dtype}",
                                       f"jax {jax.__version__}", dev.device_kind, figures, status, notes))
    benchlib.print_records(records)
    benchlib.write_records(a.json, records)


if __name__ == "__main__":
    main()
