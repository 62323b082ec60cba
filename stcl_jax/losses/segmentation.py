"""Per-pixel segmentation cross-entropy with an ignore label (mmseg's `CrossEntropyLoss`, reduction "mean")."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits, labels, ignore_index=255):
    """Mean over valid pixels of -log softmax(logits)[label], in float32; 0 (gradient 0) when none is valid.

    logits: (..., C) float of any dtype; labels: (...) integers. Pixels whose label is `ignore_index` or lies
    outside [0, C) take no part (an out-of-range label is never read as a class).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"cross_entropy: logits (..., C) and labels (...) disagree: {logits.shape} vs "
                         f"{labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"cross_entropy: labels must be integers, got dtype {labels.dtype}")
    num_classes = logits.shape[-1]
    labels = labels.astype(jnp.int32)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    safe = jnp.where(valid, labels, 0)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe[..., None], axis=-1)[..., 0]
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    return total / jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)
