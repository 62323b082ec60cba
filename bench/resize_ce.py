"""Logit upsampling + cross-entropy, forward + backward: the old formulation against the model's current one.

    python bench/resize_ce.py                 # 8 x 192x192x124 logits (stride 4 of a 768 crop) -> 768x768
    python bench/resize_ce.py --smoke         # 2 x 8x8x12 -> 32x32 (CPU)

old: `jax.image.resize(..., "bilinear", antialias=False)` (one dense einsum per axis at HIGHEST precision) and CE
as `-take_along_axis(log_softmax)` (its gradient a scatter), written out here as the reference of what the
model did before. new: whatever `stcl_jax.models.upernet.resize_bilinear` and `stcl_jax.losses.cross_entropy`
are in this checkout. Both: `jax.value_and_grad` w.r.t. the low-resolution logits, jitted once, `--steps` calls
back to back with one block at the end. Also reported: compiled temporaries, and how far new is from old
(loss relative difference, gradient relative L2 difference; both should be ~1e-6 in float32).
"""

from __future__ import annotations

import argparse

import benchlib  # noqa: E402  (bench/ is sys.path[0] when a script of it runs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=192, help="logit map side (stride 4)")
    p.add_argument("--scale", type=int, default=4, help="upsampling factor")
    p.add_argument("--classes", type=int, default=124)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="logit dtype")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.size, a.classes, a.steps = 2, 8, 12, 2
    return a


def old_resize(x, size):
    import jax

    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), "bilinear", antialias=False)


def old_cross_entropy(logits, labels, ignore_index=255):
    import jax
    import jax.numpy as jnp

    valid = (labels != ignore_index) & (labels >= 0) & (labels < logits.shape[-1])
    safe = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)


def main(argv=None):
    a = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    from stcl_jax.losses import cross_entropy
    from stcl_jax.models.upernet import resize_bilinear

    dev = jax.devices()[0]
    rng = np.random.default_rng(0)
    out_hw = (a.size * a.scale, a.size * a.scale)
    logits = jnp.asarray(rng.normal(size=(a.batch, a.size, a.size, a.classes)), a.dtype)
    labels = rng.integers(0, a.classes, size=(a.batch, *out_hw)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.05] = 255
    labels = jnp.asarray(labels)
    variants = {"old": lambda x, y: old_cross_entropy(old_resize(x, out_hw), y),
                "new": lambda x, y: cross_entropy(resize_bilinear(x, out_hw), y, average="valid")}  # old: valid mean
    figures, results = {}, {}
    for name, loss in variants.items():
        fn = jax.jit(jax.value_and_grad(loss))
        compiled = fn.lower(logits, labels).compile()
        memory = compiled.memory_analysis()
        seconds, results[name] = benchlib.timed(compiled, (logits, labels), a.steps)
        figures[f"{name}_ms"] = 1e3 * seconds
        if memory is not None:
            figures[f"{name}_temp_gib"] = memory.temp_size_in_bytes / 2 ** 30
    (loss_old, grad_old), (loss_new, grad_new) = results["old"], results["new"]
    g_old, g_new = np.asarray(grad_old, np.float64), np.asarray(grad_new, np.float64)
    figures.update(speedup=figures["old_ms"] / figures["new_ms"],
                   loss_rel_diff=abs(float(loss_new) - float(loss_old)) / abs(float(loss_old)),
                   grad_rel_l2_diff=float(np.linalg.norm(g_new - g_old) / np.linalg.norm(g_old)))
    shape = f"{a.batch}x{a.size}x{a.size}x{a.classes} {a.dtype} -> {out_hw[0]}x{out_hw[1]}"
    records = [benchlib.record(f"resize + CE, old vs new ({shape})", f"jax {jax.__version__}", dev.device_kind,
                               figures)]
    benchlib.print_records(records)
    benchlib.write_records(a.json, records)


if __name__ == "__main__":
    main()
