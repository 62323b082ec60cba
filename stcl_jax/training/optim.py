"""AdamW with mmseg's warmup + poly learning-rate schedule and a weight-decay mask.

Schedule (mmcv `PolyLrUpdaterHook` with `warmup="linear"`, `by_epoch=False`), for step s (0-based, the number
of updates done before this one):

    poly(s)   = (lr - min_lr) * (1 - s / total_steps) ** power + min_lr
    lr(s)     = poly(s) * (1 - (1 - s / warmup_steps) * (1 - warmup_ratio))   for s < warmup_steps
              = poly(s)                                                          otherwise

Weight decay (decoupled, as torch.optim.AdamW): none on 1-d leaves, leaves named "bias" or "scale" (norms,
biases) and leaves whose "/"-joined path matches one of `config.optim.no_decay_patterns`.
"""

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax


def poly_warmup_schedule(*, learning_rate: float, total_steps: int, warmup_steps: int, warmup_ratio: float,
                         power: float = 1.0, min_lr: float = 0.0) -> Callable[[Any], jax.Array]:
    """The mmseg schedule above as an optax schedule (a function of the update count)."""
    if total_steps <= 0:
        raise ValueError(f"config.total_steps must be > 0, got {total_steps}")
    if warmup_steps < 0 or warmup_steps > total_steps:
        raise ValueError(f"config.optim.warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        frac = jnp.clip(s / total_steps, 0.0, 1.0)
        poly = (learning_rate - min_lr) * (1.0 - frac) ** power + min_lr
        if warmup_steps == 0:
            return poly
        # 1 - (1 - s/w)(1 - r), written without the cancellation that loses fp32 digits near s = 0
        warm = warmup_ratio + (s / warmup_steps) * (1.0 - warmup_ratio)
        return jnp.where(s < warmup_steps, poly * warm, poly)

    return schedule


def path_str(path) -> str:
    """'a/b/c' for a jax key path of dict keys / attributes / indices."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def decay_mask(params, no_decay_patterns: Sequence[str]):
    """A pytree of bools like `params`: True where weight decay applies (see module docstring)."""
    regexes = [re.compile(p) for p in no_decay_patterns]

    def decays(path, leaf):
        name = path_str(path)
        last = name.rsplit("/", 1)[-1]
        if jnp.ndim(leaf) <= 1 or last in ("bias", "scale"):
            return False
        return not any(r.search(name) for r in regexes)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, schedule) from `config.optim` and `config.total_steps`."""
    o = config.optim
    schedule = poly_warmup_schedule(learning_rate=o.learning_rate, total_steps=config.total_steps,
                                    warmup_steps=o.warmup_steps, warmup_ratio=o.warmup_ratio,
                                    power=o.poly_power, min_lr=o.min_lr)
    patterns = tuple(o.no_decay_patterns)
    chain = []
    if o.grad_clip_norm and o.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
    chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay,
                             mask=lambda p: decay_mask(p, patterns)))
    return optax.chain(*chain), schedule
