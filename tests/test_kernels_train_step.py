"""The whole train step of configs/demo.py:runlocal with both Pallas kernels on (interpret mode on the CPU:
`model.attention_impl="pallas"`, `loss.stcl_implementation="pallas"`) equals the XLA step: every loss term and
the parameter gradients. The step runs with plain SGD at learning rate 1, so `params - new params` is exactly the
gradient the step applied."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stcl_jax.config_files import load_config
from stcl_jax.models import build_segmenter
from stcl_jax.training.loop import make_train_step
from stcl_jax.training.state import init_fn

CROP = (64, 96)  # the demo's own crop
DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.py")


def _config(attention, stcl):
    c = load_config(DEMO + ":runlocal")
    c.global_batch_size, c.data.crop_size = 1, CROP   # one clip of two frames: interpret mode is slow
    c.model.attention_impl, c.loss.stcl_implementation = attention, stcl
    c.model.decoder.dropout = c.model.aux.dropout = c.model.swin.drop_path_rate = 0.0
    return c


def _step(config, batch, state=None):
    """(metrics, gradients) of one step from `state` (default: a fresh init; the kernels do not change the
    parameters, so the XLA model's init serves both)."""
    model = build_segmenter(config.model)
    tx = optax.sgd(1.0)
    if state is None:
        state = jax.jit(init_fn(model, tx, (1, *config.data.crop_size, 3)))(jax.random.PRNGKey(0))
    new, metrics = jax.jit(make_train_step(model, tx, lambda s: 1.0, config))(state, batch)
    grads = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64), state.params, new.params)
    return jax.device_get(metrics), grads, state


def test_train_step_with_both_kernels_equals_the_xla_step():
    rng = np.random.default_rng(0)
    h, w = CROP
    labels = np.repeat(np.repeat(rng.integers(0, 5, size=(1, 2, h // 8, w // 8)), 8, axis=2), 8, axis=3)
    labels[0, 1, :4] = 255                                              # some ignored pixels in the reference frame
    batch = {"image": jnp.asarray(rng.integers(0, 256, size=(1, 2, h, w, 3)), jnp.uint8),
             "image_hw": jnp.asarray([[h, w]], jnp.int32), "label": jnp.asarray(labels, jnp.uint8),
             "stcl": jnp.asarray([True])}
    ref_metrics, ref_grads, state = _step(_config("xla", "rows"), batch)
    metrics, grads, _ = _step(_config("pallas", "pallas"), batch, state)
    assert float(ref_metrics["stcl"]) > 0
    for term in ("loss", "ce", "aux", "stcl", "grad_norm"):
        np.testing.assert_allclose(metrics[term], ref_metrics[term], rtol=1e-5, err_msg=term)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    # The gradient as one vector. Leaf by leaf, relative to each leaf's own scale, is no measure here: the decoder's
    # BatchNorms see 2 images (the pooled PSP maps 1x1), so a step this small is ill-conditioned (an XLA-only run
    # with the attention output moved by one ulp changes single leaves by percent), and some leaves (the stage
    # norms' biases) have gradients near 0. Measured here: relative L2 2.5e-5, largest error 2.6e-5 of the largest
    # gradient entry.
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(grads)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ref_grads)])
    assert np.linalg.norm(a - b) <= 1e-4 * np.linalg.norm(b)
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
