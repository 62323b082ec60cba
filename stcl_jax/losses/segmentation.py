"""Per-pixel segmentation cross-entropy with an ignore label (mmseg's `CrossEntropyLoss`).

Two reductions of the per-pixel losses (ignored pixels contribute 0 to the sum):
  "all"    sum / number of pixels, ignored ones included: mmseg's default (`avg_non_ignore=False`, the toolbox
           the paper trained with), so padded or unlabelled pixels dilute the loss;
  "valid"  sum / number of valid pixels: PyTorch's / Hugging Face's `ignore_index` mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AVERAGES = ("all", "valid")


def cross_entropy(logits, labels, ignore_index=255, average="all"):
    """Mean of -log softmax(logits)[label] over the pixels, in float32; 0 (gradient 0) when none is valid.

    logits: (..., C) float of any dtype (upcast to float32 inside the reductions); labels: (...) integers. Pixels
    whose label is `ignore_index` or lies outside [0, C) take no part (an out-of-range label is never read as a
    class). `average`: "all" divides by every pixel, "valid" by the valid ones (see the module docstring). No
    gather or scatter: the label's logit is picked by a masked sum over the classes.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"cross_entropy: logits (..., C) and labels (...) disagree: {logits.shape} vs "
                         f"{labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
    if average not in AVERAGES:
        raise ValueError(f"cross_entropy: average={average!r}, expected one of {AVERAGES}")
    num_classes = logits.shape[-1]
    labels = labels.astype(jnp.int32)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    x = logits.astype(jnp.float32)
    classes = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    picked = jnp.sum(jnp.where(classes == labels[..., None], x, 0.0), axis=-1)
    nll = jax.nn.logsumexp(x, axis=-1) - picked
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    if average == "all":
        return total / max(labels.size, 1)
    return total / jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)
