"""cross_entropy against torch.nn.functional.cross_entropy (float64, ignore_index, reduction "mean")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stcl_jax.losses import cross_entropy


def _torch_reference(logits, labels, ignore_index):
    x = torch.tensor(np.asarray(logits, np.float64), requires_grad=True)
    y = torch.tensor(labels.astype(np.int64))
    loss = torch.nn.functional.cross_entropy(torch.movedim(x, -1, 1), y, ignore_index=ignore_index)
    loss.backward()
    return loss.item(), x.grad.numpy()


@pytest.mark.parametrize("shape,classes,ignore_frac", [((2, 5, 7), 4, 0.3), ((1, 3, 9, 11), 6, 0.0),
                                                        ((3, 4, 4), 2, 0.8)])
def test_matches_torch(shape, classes, ignore_frac):
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.normal(size=shape + (classes,))).astype(np.float32)
    labels = rng.integers(0, classes, size=shape)
    labels[rng.random(shape) < ignore_frac] = 255
    ref_loss, ref_grad = _torch_reference(logits, labels, 255)
    loss, grad = jax.value_and_grad(cross_entropy)(jnp.asarray(logits), jnp.asarray(labels, jnp.int32))
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)


def test_all_ignored_is_zero_with_zero_gradient():
    logits = jnp.ones((2, 3, 3, 5))
    labels = jnp.full((2, 3, 3), 255, jnp.int32)
    loss, grad = jax.value_and_grad(cross_entropy)(logits, labels)
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)


def test_bfloat16_logits_and_other_ignore_index_and_out_of_range_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 6, 6))
    labels[0, 0] = -1  # the ignore label here
    ref_loss, _ = _torch_reference(logits, labels, -1)
    loss = cross_entropy(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels, jnp.int32), ignore_index=-1)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-2)
    labels[0, 1] = 7  # >= C: not a class, left out like an ignored pixel
    labels_ref = labels.copy()
    labels_ref[0, 1] = -1
    np.testing.assert_allclose(float(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), ignore_index=-1)),
                               _torch_reference(logits, labels_ref, -1)[0], rtol=1e-5)


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="disagree"):
        cross_entropy(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 5), jnp.int32))
