"""Sweeps: named lists of config overrides that `python -m stcl_jax.sweep` expands into runs.

A config file exposes them next to `get_config` with `from stcl_jax.configs.sweeps import get_sweep`. Each point is a plain dict of dotted config fields -> values, applied to the config's
own `get_config(arg)` (so `configs/demo.py:runlocal` sweeps the tiny model). Sweeps:

  temperature             the paper's table 3 grid: tau in {0.05, 0.07, 0.1, 0.2} x projection dim {256, 512}.
  temperature_large_batch the same grid at global batch 64 with `loss.contrast_scope="batch"` (every anchor
                          contrasts with every pixel of the batch, so more negatives per anchor).
  temperature_smoke       two points (tau 0.05 / 0.2, dim as configured): a quick check of the machinery.

Large-batch rule (Goyal et al. 2017, "Accurate, Large Minibatch SGD", the linear scaling rule): a point that sets
`global_batch_size` B but not `optim.learning_rate` gets, from the config's own reference values (B0 = 16 clips,
lr0 = 7e-5, 20K steps, 1.5K warmup steps in the paper's recipe),
    learning_rate = lr0 * B / B0,   total_steps = round(steps0 * B0 / B),   warmup_steps = round(warmup0 * B0 / B)
i.e. the same number of clips seen and the same warmup in clips. `scaled_batch_overrides` computes this; the
sweep CLI applies it and prints the result, and anyone can call it for a single run.
"""

TEMPERATURES = (0.05, 0.07, 0.1, 0.2)
PROJECTION_DIMS = (256, 512)
LARGE_BATCH = 64


def _grid(**extra):
    return [{"loss.temperature": t, "model.projection.dim": d, **extra}
            for d in PROJECTION_DIMS for t in TEMPERATURES]


SWEEPS = {
    "temperature": lambda: _grid(),
    "temperature_large_batch": lambda: _grid(global_batch_size=LARGE_BATCH, **{"loss.contrast_scope": "batch"}),
    "temperature_smoke": lambda: [{"loss.temperature": 0.05}, {"loss.temperature": 0.2}],
}


def get_sweep(name: str) -> list[dict]:
    """The override dicts of sweep `name` (fresh copies: callers may modify them)."""
    if name not in SWEEPS:
        raise KeyError(f"unknown sweep {name!r}: stcl_jax/configs/sweeps.py defines {sorted(SWEEPS)}")
    return [dict(p) for p in SWEEPS[name]()]


def scaled_batch_overrides(config, global_batch_size: int, *, scale_steps: bool = True) -> dict:
    """Overrides that move `config` to `global_batch_size` clips per step by the linear scaling rule above.

    `config` holds the reference values (its `global_batch_size`, `optim.learning_rate`, `total_steps`,
    `optim.warmup_steps`). With `scale_steps=False` only the batch and learning rate change.
    """
    b0 = int(config.global_batch_size)
    if int(global_batch_size) != global_batch_size or global_batch_size < 1:
        raise ValueError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
    ratio = global_batch_size / b0
    out = {"global_batch_size": int(global_batch_size), "optim.learning_rate": config.optim.learning_rate * ratio}
    if scale_steps:
        out["total_steps"] = max(1, round(config.total_steps / ratio))
        out["optim.warmup_steps"] = round(config.optim.warmup_steps / ratio)
    return out
