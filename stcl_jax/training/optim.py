"""AdamW (the Swin recipe) or SGD with momentum (the CNN recipe) with mmseg's warmup + poly learning-rate
schedule and a weight-decay mask.

Schedule (mmcv `PolyLrUpdaterHook` with `warmup="linear"`, `by_epoch=False`), for step s (0-based, the number
of updates done before this one):

    poly(s)   = (lr - min_lr) * (1 - s / total_steps) ** power + min_lr
    lr(s)     = poly(s) * (1 - (1 - s / warmup_steps) * (1 - warmup_ratio))   for s < warmup_steps
              = poly(s)                                                          otherwise

`config.optim.name`: "adamw" (torch.optim.AdamW: decoupled weight decay) or "sgd" (torch.optim.SGD: momentum,
no dampening, no Nesterov, weight decay added to the gradient before the momentum).

Weight decay applies to every leaf except, per `config.optim.decay_exempt`:
  "mmseg"             leaves whose "/"-joined path matches one of `config.optim.no_decay_patterns` (mmseg's
                      `paramwise_cfg.custom_keys` with decay_mult 0, a substring match; its Swin configs exempt
                      "norm", "relative_position_bias_table", "absolute_pos_embed", so biases and the heads' BN
                      ("bn") decay; its CNN configs have no custom keys: everything decays)
  "norms_and_biases"  those, plus every 1-d leaf and every leaf named "bias" or "scale" (the timm / HF habit)
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


DECAY_EXEMPT = ("mmseg", "norms_and_biases")
OPTIMIZERS = ("adamw", "sgd")


def decay_mask(params, no_decay_patterns: Sequence[str], exempt: str = "norms_and_biases"):
    """A pytree of bools like `params`: True where weight decay applies (see module docstring)."""
    if exempt not in DECAY_EXEMPT:
        raise ValueError(f"config.optim.decay_exempt={exempt!r}: expected one of {DECAY_EXEMPT}")
    regexes = [re.compile(p) for p in no_decay_patterns]

    def decays(path, leaf):
        name = path_str(path)
        last = name.rsplit("/", 1)[-1]
        if exempt == "norms_and_biases" and (jnp.ndim(leaf) <= 1 or last in ("bias", "scale")):
            return False
        return not any(r.search(name) for r in regexes)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, schedule) from `config.optim` and `config.total_steps`."""
    o = config.optim
    schedule = poly_warmup_schedule(learning_rate=o.learning_rate, total_steps=config.total_steps,
                                    warmup_steps=o.warmup_steps, warmup_ratio=o.warmup_ratio,
                                    power=o.poly_power, min_lr=o.min_lr)
    patterns, exempt = tuple(o.no_decay_patterns), o.decay_exempt
    name = o.name
    if name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name={name!r}: expected one of {OPTIMIZERS}")
    mask = lambda p: decay_mask(p, patterns, exempt)  # noqa: E731
    chain = []
    if o.grad_clip_norm and o.grad_clip_norm > 0:
        chain.append(optax.clip_by_global_norm(o.grad_clip_norm))
    if name == "sgd":  # torch.optim.SGD: g + wd * p, then the momentum trace, then -lr
        chain += [optax.add_decayed_weights(o.weight_decay, mask), optax.sgd(schedule, momentum=o.momentum)]
    else:
        chain.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=mask))
    return optax.chain(*chain), schedule
