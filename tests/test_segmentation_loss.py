"""cross_entropy against torch.nn.functional.cross_entropy (float64): both reductions, gradients, ignore rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from stcl_jax.losses import cross_entropy


def _torch_reference(logits, labels, ignore_index, average="valid"):
    """mmseg's "all" reduction is torch's summed loss over the number of pixels; "valid" is torch's own mean."""
    x = torch.tensor(np.asarray(logits, np.float64), requires_grad=True)
    y = torch.tensor(labels.astype(np.int64))
    if average == "valid":
        loss = torch.nn.functional.cross_entropy(torch.movedim(x, -1, 1), y, ignore_index=ignore_index)
    else:
        loss = torch.nn.functional.cross_entropy(torch.movedim(x, -1, 1), y, ignore_index=ignore_index,
                                                 reduction="sum") / y.numel()
    loss.backward()
    return loss.item(), x.grad.numpy()


@pytest.mark.parametrize("average", ["all", "valid"])
@pytest.mark.parametrize("shape,classes,ignore_frac", [((2, 5, 7), 4, 0.3), ((1, 3, 9, 11), 6, 0.0),
                                                        ((3, 4, 4), 2, 0.8)])
def test_matches_torch(shape, classes, ignore_frac, average):
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.normal(size=shape + (classes,))).astype(np.float32)
    labels = rng.integers(0, classes, size=shape)
    labels[rng.random(shape) < ignore_frac] = 255
    ref_loss, ref_grad = _torch_reference(logits, labels, 255, average)
    fn = lambda x: cross_entropy(x, jnp.asarray(labels, jnp.int32), average=average)  # noqa: E731
    loss, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)


def test_the_reductions_differ_by_the_valid_share():
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.normal(size=(2, 6, 6, 5)), jnp.float32)
    labels = rng.integers(0, 5, size=(2, 6, 6))
    labels[0] = 255  # half the pixels ignored (a padded frame)
    labels = jnp.asarray(labels, jnp.int32)
    np.testing.assert_allclose(float(cross_entropy(logits, labels, average="all")),
                               0.5 * float(cross_entropy(logits, labels, average="valid")), rtol=1e-6)


@pytest.mark.parametrize("average", ["all", "valid"])
def test_all_ignored_is_zero_with_zero_gradient(average):
    logits = jnp.ones((2, 3, 3, 5))
    labels = jnp.full((2, 3, 3), 255, jnp.int32)
    loss, grad = jax.value_and_grad(lambda x: cross_entropy(x, labels, average=average))(logits)
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("average", ["all", "valid"])
def test_bfloat16_logits_and_other_ignore_index_and_out_of_range_labels(average):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=(2, 6, 6))
    labels[0, 0] = -1  # the ignore label here
    ref_loss, ref_grad = _torch_reference(logits, labels, -1, average)
    fn = lambda x: cross_entropy(x, jnp.asarray(labels, jnp.int32), ignore_index=-1, average=average)  # noqa: E731
    loss, grad = jax.value_and_grad(fn)(jnp.asarray(logits, jnp.bfloat16))
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(float(loss), ref_loss, rtol=2e-2)
    np.testing.assert_allclose(np.asarray(grad, np.float32), ref_grad, rtol=3e-2, atol=2e-4)
    labels[0, 1] = 7    # >= C: not a class, left out like an ignored pixel
    labels[1, 2] = -3   # negative and not the ignore label: left out too
    labels_ref = labels.copy()
    labels_ref[0, 1] = labels_ref[1, 2] = -1
    ref_loss, ref_grad = _torch_reference(logits, labels_ref, -1, average)
    fn = lambda x: cross_entropy(x, jnp.asarray(labels), ignore_index=-1, average=average)  # noqa: E731
    loss, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)


def test_no_gather_or_scatter_in_the_gradient():
    labels = jnp.zeros((2, 4, 4), jnp.int32)
    text = jax.jit(jax.grad(lambda x: cross_entropy(x, labels))).lower(jnp.zeros((2, 4, 4, 3))).as_text()
    assert "gather" not in text and "scatter" not in text


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="disagree"):
        cross_entropy(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 5), jnp.int32))
    with pytest.raises(ValueError, match="average='mean'"):
        cross_entropy(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 4), jnp.int32), average="mean")
